"""Write SynthAV scenes as Ref-AVSBench, AVSBench-semantic (v2), RVOS and YouTube-VOS-style trees, plus a manifest.

Output tree (``OUT`` is the folder given to ``avseg data synth``)::

    OUT/
    ├── manifest.json                                  # written last: a crashed run has none
    ├── refavs/                                        # read with --format refavs
    │   ├── metadata.csv                               # vid,uid,split,fid,exp,modalities
    │   ├── media/{vid}/frames/{0..T-1}.jpg
    │   ├── media/{vid}/audio.wav                      # 16 kHz mono PCM16
    │   ├── media/null_{c|m}-{vid}/...                 # the same frames and audio (hard links when possible)
    │   ├── gt_mask/{vid}/fid_{fid}/{00000..}.png      # 0/255, one folder per referred object
    │   └── gt_mask/null_{c|m}-{vid}/fid_0/{00000..}.png   # all zeros
    ├── avss/                                          # read with --format avss
    │   ├── metadata.csv                               # uid,label,split (label v2)
    │   ├── label2idx.json                             # 71 entries: background 0, classes 1..K, unused_{j}
    │   └── v2/{vid}/{frames/{i}.jpg, audio.wav, labels_rgb/{i}.png}
    ├── rvos/{split}/                                  # read with --format rvos
    │   ├── meta_expressions.json
    │   ├── mask_dict.json                             # anno_id -> per-frame COCO RLE
    │   └── JPEGImages/{vid}/{00000..}.jpg
    └── vos/{split}/                                   # read with --format vos (only when asked for)
        ├── meta.json                                  # {"videos": {vid: {"objects": {id: {"category", "frames"}}}}}
        ├── JPEGImages/{vid}/{00000..}.jpg
        └── Annotations/{vid}/{00000..}.png            # palette PNG: pixel = object id (fid + 1), 0 background

Layout decisions (avseg's, documented here and in the manifest):

- **Ref-AVS.** uids are ``{vid}_{class}_{k}`` (``k`` counts the video's positive expressions from 1) and
  ``null_{c|m}-{vid}_null_{k}`` (``k`` counts its null expressions from 1); ``fid`` is the object index in the
  scene (0 for nulls). ``null_c`` names an absent object, ``null_m`` a present object that never sounds (see
  :mod:`avseg.data.synthav.expressions`). The ``modalities`` column (``audio``, ``visual``, ``audio+visual``) is an
  avseg extension. ``test_n`` videos carry null expressions only; train, val and test_s videos carry some too.
- **AVSS.** Every video is one ``v2`` clip whose split name is the video's split (train, val, test_s, test_u,
  test_n: a ``test_n`` clip is an ordinary clip, since AVSS has no expressions). ``labels_rgb/{i}.png`` paints the
  visible pixels of the objects sounding in second ``i`` in their class colour (AVSBench palette); silent objects are
  background.
- **RVOS.** RVOS is text-only, so only ``visual`` expressions go there (no audio, no nulls); ``test_n`` videos have
  none, so there is no ``rvos/test_n``. ``anno_id`` is ``10 * video_index + fid`` (unique within a split), ``obj_id``
  the fid, ``exp_id`` the position among the video's RVOS expressions.
- **VOS** (semi-supervised video object segmentation, YouTube-VOS layout). Every video of every split, with every
  object: its id is ``fid + 1`` (ids 1..n) and its category its shape class; ``frames`` lists the frames where some
  of it is visible. Every frame is annotated in every split (no split is named ``valid`` or ``test``, which the
  reader treats as first-frame-only), so an object hidden on a frame has an empty, labelled mask there.
- **Layouts.** ``refavs``, ``avss`` and ``rvos`` are written by default; ``vos`` when asked for (``layouts``). The
  files of a layout do not depend on which other layouts are written.
- **Frames** are written once (JPEG, quality 95) in the first layout that holds them (``refavs/media/{vid}`` by
  default) and hard-linked into the other layouts; if the file system refuses links, they are copied.

Every file is written to a temporary name and renamed (with the permissions the umask gives, so that a shared folder
stays readable), and contains no time stamps or absolute paths, so the same seed gives byte-identical trees.
"""

from __future__ import annotations

import csv
import io
import json
import os
import shutil
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf

from avseg.data import rle
from avseg.data.avss import AVSS_NUM_CLASSES, avss_palette
from avseg.data.synthav.audio import SAMPLE_RATE, SOUND_DESCRIPTIONS, mix_scene
from avseg.data.synthav.expressions import TEMPLATES, Expression, select_expressions
from avseg.data.synthav.scene import (
    CLASSES,
    COLOURS,
    HELD_OUT_CLASS,
    SPLITS,
    Scene,
    Split,
    class_index,
    generate_scene,
    render_scene,
)
from avseg.fileio import atomic_file, atomic_write_bytes, atomic_write_text
from avseg.media.image import write_jpeg, write_png

__all__ = [
    "DEFAULT_LAYOUTS",
    "GENERATOR_VERSION",
    "LAYOUTS",
    "VideoResult",
    "check_layouts",
    "generate_video",
    "generation_settings",
    "label2idx",
    "write_tables",
]

GENERATOR_VERSION = "synthav-1"
LAYOUTS = ("refavs", "avss", "rvos", "vos")
"""Every layout SynthAV can write, in the order they are written."""
DEFAULT_LAYOUTS = ("refavs", "avss", "rvos")
"""The layouts ``avseg data synth`` writes unless told otherwise."""
NULL_MEANINGS = {
    "c": "the expression names an object that is absent from the video (avseg's meaning; Ref-AVS does not document c)",
    "m": "the expression names an object that is present but never sounds (avseg's meaning; Ref-AVS does not "
    "document m)",
}
REFAVS_COLUMNS = ("vid", "uid", "split", "fid", "exp", "modalities")
_JPEG_QUALITY = 95


@dataclass
class VideoResult:
    """What one video contributed, merged into the metadata files and the manifest by :func:`write_tables`.

    Attributes:
        index, vid, split: the video.
        refavs_rows: rows of ``refavs/metadata.csv`` (column -> value).
        rvos_video: the video's entry of ``meta_expressions.json``, or None when it has no visual expression.
        rvos_masks: ``mask_dict.json`` entries (``str(anno_id)`` -> per-frame RLE list).
        vos_video: the video's entry of the VOS ``meta.json``, or None when that layout is not written.
        info: the video's manifest entry (objects, sounding seconds).
        expressions: manifest entries per Ref-AVS uid.
    """

    index: int
    vid: str
    split: str
    refavs_rows: list[dict[str, str]] = field(default_factory=list)
    rvos_video: dict[str, Any] | None = None
    rvos_masks: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    vos_video: dict[str, Any] | None = None
    info: dict[str, Any] = field(default_factory=dict)
    expressions: dict[str, dict[str, Any]] = field(default_factory=dict)


# ---------------------------------------------------------------------- file helpers


def _write_json(path: Path, data: Any) -> None:
    atomic_write_text(path, json.dumps(data, indent=1, sort_keys=True) + "\n")


def _write_csv(path: Path, columns: Iterable[str], rows: Iterable[dict[str, str]]) -> None:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(columns), lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(path, buffer.getvalue())


def _write_wav(path: Path, wave: np.ndarray) -> None:
    buffer = io.BytesIO()
    sf.write(buffer, wave, SAMPLE_RATE, subtype="PCM_16", format="WAV")
    atomic_write_bytes(path, buffer.getvalue())


def _link(src: Path, dst: Path) -> None:
    """Hard-link ``src`` to ``dst`` (replacing it), or copy when the file system cannot link."""
    with atomic_file(dst) as tmp:
        # The placeholder goes so that the link can take its (random, hence unclaimed) name. Making the linked file's
        # mode follow the umask leaves it unchanged: ``src`` was written by this run, under the same umask.
        tmp.unlink()
        try:
            os.link(src, tmp)
        except OSError:
            shutil.copyfile(src, tmp)


# ---------------------------------------------------------------------- one video


def label2idx() -> dict[str, int]:
    """The AVSS ``label2idx.json`` mapping: background 0, the SynthAV classes 1..K, ``unused_{j}`` up to 70."""
    mapping = {"background": 0}
    mapping.update({c.name: class_index(c.name) for c in CLASSES})
    for j in range(len(mapping), AVSS_NUM_CLASSES):
        mapping[f"unused_{j}"] = j
    return mapping


def _uids(scene: Scene, expressions: list[Expression]) -> list[str]:
    uids, positive, null = [], 0, 0
    for e in expressions:
        if e.target is None:
            null += 1
            uids.append(f"null_{e.null_kind}-{scene.vid}_null_{null}")
        else:
            positive += 1
            uids.append(f"{scene.vid}_{scene.objects[e.target].cls}_{positive}")
    return uids


def _object_info(scene: Scene) -> list[dict[str, Any]]:
    out = []
    for o in scene.objects:
        out.append(
            {
                "fid": o.fid,
                "class": o.cls,
                "colour": o.colour,
                "radius_px": round(o.radius, 2),
                "sounding_seconds": [int(t) for t in np.flatnonzero(o.sounding)],
                "loudness": [round(float(v), 4) for v in o.loudness],
            }
        )
    return out


class _Media:
    """One video's frames and soundtrack: written at the first place a layout asks for them, linked at the others."""

    def __init__(self, frames: np.ndarray, wave: np.ndarray) -> None:
        self.frames, self.wave = frames, wave
        self.frame_files: list[Path] | None = None
        self.audio_file: Path | None = None

    def place_frames(self, folder: Path, name_of: Callable[[int], str]) -> None:
        targets = [folder / name_of(i) for i in range(len(self.frames))]
        if self.frame_files is None:
            for path, frame in zip(targets, self.frames):
                write_jpeg(path, frame, quality=_JPEG_QUALITY)
            self.frame_files = targets
        else:
            for src, dst in zip(self.frame_files, targets):
                _link(src, dst)

    def place_audio(self, path: Path) -> None:
        if self.audio_file is None:
            _write_wav(path, self.wave)
            self.audio_file = path
        else:
            _link(self.audio_file, path)


def check_layouts(layouts: Iterable[str]) -> tuple[str, ...]:
    """``layouts`` in writing order, without repeats (ValueError naming an unknown or missing layout)."""
    asked = list(layouts)
    unknown = [name for name in asked if name not in LAYOUTS]
    if unknown or not asked:
        raise ValueError(f"--layouts must name one or more of {', '.join(LAYOUTS)}, got {asked}")
    return tuple(name for name in LAYOUTS if name in asked)


def generate_video(
    out: Path,
    seed: int,
    index: int,
    size: int,
    num_frames: int,
    layouts: Iterable[str] = DEFAULT_LAYOUTS,
    split: Split | None = None,
) -> VideoResult:
    """Generate video ``index`` and write its files in the given layouts (metadata files come later).

    Args:
        out: the output root (``OUT``).
        seed: generator seed.
        index: video index.
        size: frame side in pixels.
        num_frames: ``T``.
        layouts: the layouts to write (names of :data:`LAYOUTS`).
        split: the video's split (None: the one its index gives; ``"train"`` for an extra training video).

    Returns:
        What the video contributes to the metadata files and the manifest.
    """
    layouts = check_layouts(layouts)
    scene = generate_scene(seed, index, size=size, num_frames=num_frames, split=split)
    frames, labels = render_scene(scene)  # (T, S, S, 3), (T, S, S)
    wave = mix_scene(scene)
    expressions = select_expressions(scene, np.random.default_rng([seed, index, 2]))
    vid, split, t_count = scene.vid, scene.split, scene.num_frames
    result = VideoResult(index=index, vid=vid, split=split)
    media = _Media(frames, wave)

    # Ref-AVS: media, masks of every referred object, null media folders and their empty masks, metadata rows.
    uids = _uids(scene, expressions)
    refavs = out / "refavs"
    if "refavs" in layouts:
        media.place_frames(refavs / "media" / vid / "frames", lambda i: f"{i}.jpg")
        media.place_audio(refavs / "media" / vid / "audio.wav")
    zero_mask: Path | None = None
    done: set[str] = set()  # null folders and object mask folders already written
    for uid, e in zip(uids, expressions):
        if e.target is None:
            folder = uid.rsplit("_", 2)[0]
            if "refavs" in layouts and folder not in done:
                done.add(folder)
                media.place_frames(refavs / "media" / folder / "frames", lambda i: f"{i}.jpg")
                media.place_audio(refavs / "media" / folder / "audio.wav")
                for i in range(t_count):
                    dst = refavs / "gt_mask" / folder / "fid_0" / f"{i:05d}.png"
                    if zero_mask is None:
                        write_png(dst, np.zeros((size, size), dtype=np.uint8))
                        zero_mask = dst
                    else:
                        _link(zero_mask, dst)
            fid = 0
        else:
            fid = e.target
            mask_dir = refavs / "gt_mask" / vid / f"fid_{fid}"
            if "refavs" in layouts and mask_dir.name not in done:
                done.add(mask_dir.name)
                for i in range(t_count):
                    write_png(mask_dir / f"{i:05d}.png", np.where(labels[i] == fid + 1, 255, 0).astype(np.uint8))
        result.refavs_rows.append(
            {"vid": vid, "uid": uid, "split": split, "fid": str(fid), "exp": e.text, "modalities": e.modality_label}
        )

    # AVSS v2: the same frames and audio, colour masks of the objects sounding in each second.
    if "avss" in layouts:
        clip = out / "avss" / "v2" / vid
        media.place_frames(clip / "frames", lambda i: f"{i}.jpg")
        media.place_audio(clip / "audio.wav")
        palette = avss_palette(AVSS_NUM_CLASSES)
        for i in range(t_count):
            semantic = np.zeros((size, size), dtype=np.uint8)
            for o in scene.objects:
                if o.sounding[i]:
                    semantic[labels[i] == o.fid + 1] = class_index(o.cls)
            write_png(clip / "labels_rgb" / f"{i}.png", palette[semantic])

    # RVOS: visual-only expressions with per-frame RLE masks.
    frame_ids = [f"{i:05d}" for i in range(t_count)]
    rvos_ids: dict[str, str] = {}
    if "rvos" in layouts:
        rvos_expressions: dict[str, dict[str, Any]] = {}
        for uid, e in zip(uids, expressions):
            if e.target is None or "audio" in e.modalities:
                continue
            anno = 10 * index + e.target
            exp_id = str(len(rvos_expressions))
            rvos_expressions[exp_id] = {"exp": e.text, "anno_id": [anno], "obj_id": [e.target]}
            rvos_ids[uid] = f"{vid}/{exp_id}"
            if str(anno) not in result.rvos_masks:
                result.rvos_masks[str(anno)] = [rle.encode(labels[i] == e.target + 1) for i in range(t_count)]
        if rvos_expressions:
            media.place_frames(out / "rvos" / split / "JPEGImages" / vid, lambda i: f"{frame_ids[i]}.jpg")
            result.rvos_video = {"frames": frame_ids, "expressions": rvos_expressions}

    # VOS: every object, a palette annotation of all of them on every frame.
    if "vos" in layouts:
        root = out / "vos" / split
        media.place_frames(root / "JPEGImages" / vid, lambda i: f"{frame_ids[i]}.jpg")
        vos_palette = avss_palette(256)
        for i in range(t_count):
            write_png(root / "Annotations" / vid / f"{frame_ids[i]}.png", labels[i], vos_palette)
        objects = {}
        for o in scene.objects:
            visible = [frame_ids[i] for i in range(t_count) if (labels[i] == o.fid + 1).any()]
            if visible:  # an object hidden on every frame has no annotation to condition on
                objects[str(o.fid + 1)] = {"category": o.cls, "frames": visible}
        result.vos_video = {"objects": objects}

    result.info = {"index": index, "split": split, "objects": _object_info(scene)}
    for uid, e in zip(uids, expressions):
        target = None
        if e.target is not None:
            o = scene.objects[e.target]
            target = {"fid": o.fid, "class": o.cls, "colour": o.colour}
        result.expressions[uid] = {
            "vid": vid,
            "split": split,
            "text": e.text,
            "template": e.template,
            "params": dict(e.params),
            "modalities": e.modality_label,
            "target": target,
            "null_kind": e.null_kind,
            "rvos_uid": rvos_ids.get(uid),
        }
    return result


# ---------------------------------------------------------------------- tables and manifest


def _counts(videos: int, items: int, null_items: int, labelled_frames: int) -> dict[str, int]:
    return {"videos": videos, "items": items, "null_items": null_items, "labelled_frames": labelled_frames}


def _refavs_table(out: Path, results: list[VideoResult], t_count: int) -> dict[str, Any]:
    rows = [row for r in results for row in r.refavs_rows]
    _write_csv(out / "refavs" / "metadata.csv", REFAVS_COLUMNS, rows)
    refavs_counts = {}
    for split in SPLITS:
        mine = [row for row in rows if row["split"] == split]
        if mine:
            nulls = sum(row["uid"].startswith("null_") for row in mine)
            videos = len({row["vid"] for row in mine})
            refavs_counts[split] = _counts(videos, len(mine), nulls, len(mine) * t_count)
    return {"format": "refavs", "path": "refavs", "item_name": "expressions", "splits": refavs_counts}


def _avss_table(out: Path, results: list[VideoResult], t_count: int) -> dict[str, Any]:
    avss_rows = [{"uid": r.vid, "label": "v2", "split": r.split} for r in results]
    _write_csv(out / "avss" / "metadata.csv", ("uid", "label", "split"), avss_rows)
    _write_json(out / "avss" / "label2idx.json", label2idx())
    avss_counts = {}
    for split in SPLITS:
        n = sum(r.split == split for r in results)
        if n:
            avss_counts[split] = _counts(n, n, 0, n * t_count)
    return {"format": "avss", "path": "avss", "item_name": "clips", "splits": avss_counts}


def _rvos_table(out: Path, results: list[VideoResult], t_count: int) -> dict[str, Any]:
    rvos_counts = {}
    for split in SPLITS:
        mine = [r for r in results if r.split == split and r.rvos_video is not None]
        if not mine:
            continue
        videos = {r.vid: r.rvos_video for r in mine}
        masks = {key: value for r in mine for key, value in r.rvos_masks.items()}
        _write_json(out / "rvos" / split / "meta_expressions.json", {"videos": videos})
        _write_json(out / "rvos" / split / "mask_dict.json", masks)
        items = sum(len(v["expressions"]) for v in videos.values())  # type: ignore[union-attr]
        rvos_counts[split] = _counts(len(videos), items, 0, items * t_count)
    return {"format": "rvos", "path": "rvos", "item_name": "expressions", "splits": rvos_counts}


def _vos_table(out: Path, results: list[VideoResult], t_count: int) -> dict[str, Any]:
    vos_counts = {}
    for split in SPLITS:
        mine = [r for r in results if r.split == split and r.vos_video is not None]
        if not mine:
            continue
        videos = {r.vid: r.vos_video for r in mine}
        _write_json(out / "vos" / split / "meta.json", {"videos": videos})
        objects = sum(len(v["objects"]) for v in videos.values())  # type: ignore[union-attr]
        with_objects = sum(bool(v["objects"]) for v in videos.values())  # type: ignore[union-attr]
        vos_counts[split] = _counts(with_objects, objects, 0, objects * t_count)
    return {"format": "vos", "path": "vos", "item_name": "objects", "splits": vos_counts}


def generation_settings(manifest: dict[str, Any]) -> dict[str, Any]:
    """The settings a SynthAV manifest was generated with, named as ``avseg data synth`` takes them: ``videos`` (the
    cycled ones), ``extra_train_videos``, ``seed``, ``size`` and ``frames`` (None where the manifest lacks one; a
    manifest written before extra training videos existed has none)."""
    extra = manifest.get("extra_train_videos", 0)
    total = manifest.get("videos")
    videos = total - extra if isinstance(total, int) and isinstance(extra, int) else None
    settings = {"videos": videos, "extra_train_videos": extra}
    return settings | {key: manifest.get(key) for key in ("seed", "size", "frames")}


def write_tables(
    out: Path,
    results: list[VideoResult],
    *,
    seed: int,
    size: int,
    num_frames: int,
    layouts: Iterable[str] = DEFAULT_LAYOUTS,
    extra_train_videos: int = 0,
) -> dict[str, Any]:
    """Merge the per-video results into the metadata files of each layout and write ``manifest.json`` (last).

    Args:
        out: the output root.
        results: every video's result (any order; they are sorted by index).
        seed, size, num_frames: the generation settings, recorded in the manifest.
        layouts: the layouts the videos were written in; the manifest's ``layouts`` lists exactly these.
        extra_train_videos: how many of ``results`` are extra training videos (the last indices), recorded in the
            manifest; ``videos`` counts them too.

    Returns:
        The manifest.
    """
    results = sorted(results, key=lambda r: r.index)
    t_count = num_frames
    written = check_layouts(layouts)
    entries: dict[str, dict[str, Any]] = {}
    if "refavs" in written:
        entries["refavs"] = _refavs_table(out, results, t_count)
    if "avss" in written:
        entries["avss"] = _avss_table(out, results, t_count)
    if "rvos" in written:
        entries["rvos"] = _rvos_table(out, results, t_count)
    if "vos" in written:
        entries["vos"] = _vos_table(out, results, t_count)

    manifest = {
        "generator": {"name": "synthav", "version": GENERATOR_VERSION},
        "seed": seed,
        "size": size,
        "frames": num_frames,
        "videos": len(results),
        "extra_train_videos": extra_train_videos,
        "sample_rate": SAMPLE_RATE,
        "classes": [
            {
                "name": c.name,
                "index": class_index(c.name),
                "sound": c.sound,
                "sound_description": SOUND_DESCRIPTIONS[c.sound],
                "held_out": c.name == HELD_OUT_CLASS,
            }
            for c in CLASSES
        ],
        "held_out_class": HELD_OUT_CLASS,
        "colours": {name: list(rgb) for name, rgb in COLOURS.items()},
        "splits": list(SPLITS),
        "null_kinds": NULL_MEANINGS,
        "templates": {t.id: {"modalities": "+".join(t.modalities), "pattern": t.pattern} for t in TEMPLATES.values()},
        "layouts": entries,
        "video_info": {r.vid: r.info for r in results},
        "expressions": {uid: entry for r in results for uid, entry in r.expressions.items()},
    }
    _write_json(out / "manifest.json", manifest)
    return manifest
