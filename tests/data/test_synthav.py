"""SynthAV: determinism, expression/target consistency, splits, the audio mix, and the round trip through the readers.

Expected values are computed independently of the generator: expressions are re-resolved here from the manifest's
object table with separate code, masks are compared with the frame colours, the palette colours are written out by
hand, and audio is checked with an FFT of hand-built scenes.
"""

from __future__ import annotations

import csv
import hashlib
import json
import warnings
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from PIL import Image

from avseg.cli import main
from avseg.data.avss import AVSSReader
from avseg.data.refavs import RefAVSReader
from avseg.data.rvos import RVOSReader
from avseg.data.synthav import (
    CLASSES,
    COLOURS,
    DEFAULT_LAYOUTS,
    HELD_OUT_CLASS,
    LAYOUTS,
    SPLITS,
    Scene,
    SceneObject,
    class_pitch,
    generate_scene,
    matches,
    mix_scene,
    render_scene,
    resolve,
    shape_mask,
    split_for_index,
    synth,
)
from avseg.data.vos import VOSReader

N, SIZE, SEED = 10, 64, 3
READERS = {"refavs": RefAVSReader, "avss": AVSSReader, "rvos": RVOSReader}
# AVSBench's PASCAL bit-shift palette, first entries written out by hand (index -> RGB).
PASCAL = {0: (0, 0, 0), 1: (128, 0, 0), 2: (0, 128, 0), 3: (128, 128, 0), 4: (0, 0, 128), 5: (128, 0, 128)}
PASCAL |= {6: (0, 128, 128), 7: (128, 128, 128), 8: (64, 0, 0)}


def _tree_hashes(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("synthav") / "out"
    assert synth(out, videos=N, seed=SEED, size=SIZE, frames=10, workers=2) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    return out, manifest


def _refavs_rows(out: Path) -> list[dict[str, str]]:
    with open(out / "refavs" / "metadata.csv", newline="") as f:
        return list(csv.DictReader(f))


# ------------------------------------------------------------------------------------------------ determinism


def test_same_seed_gives_identical_files_regardless_of_workers_and_n(dataset, tmp_path):
    out, _ = dataset
    again = tmp_path / "again"
    assert synth(again, videos=N, seed=SEED, size=SIZE, workers=1) == 0
    first, second = _tree_hashes(out), _tree_hashes(again)
    assert first == second
    assert len(first) > 200
    # A video does not depend on how many videos are generated.
    fewer = tmp_path / "fewer"
    synth(fewer, videos=5, seed=SEED, size=SIZE, workers=1)
    small = _tree_hashes(fewer)
    shared = [k for k in small if k.startswith("refavs/media/synth00003/")]
    assert shared and all(small[k] == first[k] for k in shared)


def test_different_seed_gives_different_files(dataset, tmp_path):
    out, _ = dataset
    other = tmp_path / "other"
    synth(other, videos=N, seed=SEED + 1, size=SIZE, workers=1)
    a, b = _tree_hashes(out), _tree_hashes(other)
    frames = [k for k in a if k.endswith("frames/0.jpg") and k in b]
    assert frames and all(a[k] != b[k] for k in frames)
    assert a["manifest.json"] != b["manifest.json"]


def test_generate_scene_is_deterministic_and_validates():
    a, b = generate_scene(7, 4, size=64), generate_scene(7, 4, size=64)
    assert [o.cls for o in a.objects] == [o.cls for o in b.objects]
    assert np.array_equal(a.background, b.background)
    assert all(
        np.array_equal(x.centres, y.centres) and np.array_equal(x.loudness, y.loudness)
        for x, y in zip(a.objects, b.objects)
    )
    with pytest.raises(ValueError, match="size"):
        generate_scene(0, 0, size=8)
    with pytest.raises(ValueError, match="num_frames"):
        generate_scene(0, 0, num_frames=0)


# ------------------------------------------------------------------------------------------------ splits and classes


def test_split_cycle_covers_every_split_from_five_videos():
    assert {split_for_index(i) for i in range(5)} == set(SPLITS)
    counts = Counter(split_for_index(i) for i in range(200))
    assert counts == {"train": 120, "val": 20, "test_s": 20, "test_u": 20, "test_n": 20}


def test_held_out_class_only_in_test_u():
    for i in range(60):
        scene = generate_scene(SEED, i, size=64)
        has_held_out = any(o.cls == HELD_OUT_CLASS for o in scene.objects)
        assert has_held_out == (scene.split == "test_u"), (i, scene.split)
        assert 1 <= len(scene.objects) <= 4


def test_held_out_class_never_named_outside_test_u(dataset):
    out, manifest = dataset
    for row in _refavs_rows(out):
        assert (HELD_OUT_CLASS in row["exp"]) <= (row["split"] == "test_u")
    for vid, info in manifest["video_info"].items():
        classes = {o["class"] for o in info["objects"]}
        assert (HELD_OUT_CLASS in classes) == (info["split"] == "test_u"), vid


def test_shapes_are_distinct_and_reasonably_large():
    yy, xx = np.mgrid[-1.5:1.5:301j, -1.5:1.5:301j]
    masks = {c.name: shape_mask(c.name, xx, -yy) for c in CLASSES}
    cell = (3 / 300) ** 2
    for name, m in masks.items():
        assert 1.3 < m.sum() * cell < 3.6, name  # a circle of radius 1 has area pi
    for a in masks:
        for b in masks:
            if a < b:
                iou = (masks[a] & masks[b]).sum() / (masks[a] | masks[b]).sum()
                assert iou < 0.85, (a, b, iou)


# ------------------------------------------------------------------------------------------------ expressions


def _independent_target(template: str, params: dict, objects: list[dict]) -> list[int]:
    """A second implementation of the non-spatial templates, from the manifest's object table."""
    voiced = [o for o in objects if o["sounding_seconds"]]
    silent = [o for o in objects if not o["sounding_seconds"]]

    def winner(values: dict[int, float], ok) -> list[int]:
        ranked = sorted(values.items(), key=lambda kv: -kv[1])
        if len(ranked) == 1 or (ranked and ok(ranked[0][1], ranked[1][1])):
            return [ranked[0][0]]
        return [k for k, _ in ranked]

    if template == "a_sounding":
        return [o["fid"] for o in voiced]
    if template == "a_first":
        return winner({o["fid"]: -o["sounding_seconds"][0] for o in voiced}, lambda a, b: a - b >= 1)
    if template == "a_loudest":
        mean = {o["fid"]: np.mean([v for v in o["loudness"] if v > 0]) for o in voiced}
        return winner(mean, lambda a, b: a >= 1.5 * b)
    if template == "a_longest":
        return winner({o["fid"]: len(o["sounding_seconds"]) for o in voiced}, lambda a, b: a - b >= 2)
    if template == "v_colour_shape":
        return [o["fid"] for o in objects if o["colour"] == params["colour"] and o["class"] == params["shape"]]
    if template == "v_shape":
        return [o["fid"] for o in objects if o["class"] == params["shape"]]
    if template == "v_colour":
        return [o["fid"] for o in objects if o["colour"] == params["colour"]]
    if template == "av_shape_sounding":
        return [o["fid"] for o in voiced if o["class"] == params["shape"]]
    if template == "av_colour_sounding":
        return [o["fid"] for o in voiced if o["colour"] == params["colour"]]
    if template == "av_silent_colour":
        return [o["fid"] for o in silent if o["colour"] == params["colour"]]
    if template == "v_biggest":
        return winner({o["fid"]: o["radius_px"] for o in objects}, lambda a, b: a >= 1.3 * b)
    if template == "v_smallest":
        return winner({o["fid"]: -o["radius_px"] for o in objects}, lambda a, b: -a * 1.3 <= -b)
    raise AssertionError(f"no independent rule for template {template!r}")


def test_expressions_resolve_to_their_written_targets(dataset):
    out, manifest = dataset
    rows = {row["uid"]: row for row in _refavs_rows(out)}
    assert set(rows) == set(manifest["expressions"])
    spatial = {"v_side", "av_sounding_side", "av_silent_side"}
    checked = Counter()
    for uid, entry in manifest["expressions"].items():
        row = rows[uid]
        objects = manifest["video_info"][entry["vid"]]["objects"]
        assert row["modalities"] == entry["modalities"]
        assert row["exp"] == entry["text"]
        if entry["target"] is None:
            continue
        fid = entry["target"]["fid"]
        assert row["fid"] == str(fid) and uid == f"{entry['vid']}_{entry['target']['class']}_{uid.rsplit('_', 1)[1]}"
        if entry["template"] not in spatial:
            assert _independent_target(entry["template"], entry["params"], objects) == [fid], uid
        if "audio" in entry["modalities"] and entry["template"] not in ("av_silent_side", "av_silent_colour"):
            assert objects[fid]["sounding_seconds"], f"{uid}: audio expression whose target never sounds"
        if entry["template"].startswith("av_silent"):
            assert not objects[fid]["sounding_seconds"]
        checked[entry["modalities"]] += 1
    assert set(checked) == {"audio", "visual", "audio+visual"}


def test_positive_masks_cover_the_named_object(dataset):
    out, manifest = dataset
    for uid, entry in manifest["expressions"].items():
        if entry["target"] is None:
            continue
        vid, fid = entry["vid"], entry["target"]["fid"]
        for i in (0, 9):
            mask = np.asarray(Image.open(out / "refavs" / "gt_mask" / vid / f"fid_{fid}" / f"{i:05d}.png"))
            assert set(np.unique(mask)) <= {0, 255}
            frame = np.asarray(Image.open(out / "refavs" / "media" / vid / "frames" / f"{i}.jpg")).astype(float)
            inside = mask > 0
            if inside.sum() < 30:
                continue  # nearly hidden behind another object
            # Erode by one pixel so JPEG ringing at the border does not dominate the colour estimate.
            core = (
                inside & np.roll(inside, 1, 0) & np.roll(inside, -1, 0) & np.roll(inside, 1, 1) & np.roll(inside, -1, 1)
            )
            mean = frame[core].mean(axis=0)
            distances = {name: np.linalg.norm(mean - np.array(rgb)) for name, rgb in COLOURS.items()}
            assert min(distances, key=distances.get) == entry["target"]["colour"], (uid, i, mean)


def test_spatial_expressions_pick_the_extreme_object():
    for i in range(40):
        scene = generate_scene(SEED, i, size=96)
        for side, axis, sign in (("left", 0, -1), ("right", 0, 1), ("top", 1, -1), ("bottom", 1, 1)):
            target = resolve(scene, "v_side", {"side": side})
            if target is None:
                continue
            means = {o.fid: sign * o.centres[:, axis].mean() for o in scene.objects}
            others = [v for k, v in means.items() if k != target]
            assert all(means[target] - v >= 0.1 * 96 for v in others)


def test_nulls_name_absent_or_silent_objects_and_have_empty_masks(dataset):
    out, manifest = dataset
    nulls = {uid: e for uid, e in manifest["expressions"].items() if e["target"] is None}
    assert nulls
    test_n = [e for e in manifest["expressions"].values() if e["split"] == "test_n"]
    assert test_n and all(e["target"] is None for e in test_n)
    for uid, entry in nulls.items():
        kind = entry["null_kind"]
        assert uid.startswith(f"null_{kind}-{entry['vid']}_null_")
        objects = manifest["video_info"][entry["vid"]]["objects"]
        p = entry["params"]
        if kind == "c":
            assert entry["modalities"] == "visual"
            if "colour" in p:
                assert not any(o["class"] == p["shape"] and o["colour"] == p["colour"] for o in objects)
            else:
                assert not any(o["class"] == p["shape"] for o in objects)
        else:
            assert entry["modalities"] == "audio+visual"
            named = [o for o in objects if o["class"] == p["shape"]]
            assert len(named) == 1 and not named[0]["sounding_seconds"]
        folder = uid.rsplit("_", 2)[0]
        for i in range(10):
            assert not np.asarray(Image.open(out / "refavs" / "gt_mask" / folder / "fid_0" / f"{i:05d}.png")).any()
        assert (out / "refavs" / "media" / folder / "audio.wav").is_file()


def test_resolver_returns_none_when_ambiguous_and_av_needs_audio():
    def obj(fid, cls, colour, x, loud):
        centres = np.tile([x, 50.0], (3, 1))
        return SceneObject(fid, cls, colour, 10.0, 0.0, centres, np.asarray(loud, float), fid)

    objects = (
        obj(0, "circle", "red", 10, [0.5, 0.5, 0]),
        obj(1, "square", "red", 50, [0, 0.9, 0.9]),
        obj(2, "star", "blue", 90, [0, 0, 0]),
    )
    scene = Scene(0, 0, "train", 100, 3, objects, np.zeros((100, 100, 3), np.uint8))
    assert resolve(scene, "a_sounding") is None  # two objects sound
    assert matches(scene, "a_sounding") == [0, 1]
    assert resolve(scene, "a_first") == 0
    assert resolve(scene, "a_loudest") == 1  # 0.9 >= 1.5 * 0.5
    assert resolve(scene, "v_colour", {"colour": "red"}) is None
    assert resolve(scene, "av_colour_sounding", {"colour": "red"}) is None  # both red objects sound
    assert resolve(scene, "av_silent_side", {"side": "left"}) == 2  # the only silent object
    assert resolve(scene, "av_sounding_side", {"side": "right"}) == 1
    assert resolve(scene, "v_side", {"side": "right"}) == 2  # so the audio part changes the answer
    assert resolve(scene, "av_shape_sounding", {"shape": "star"}) is None


# ------------------------------------------------------------------------------------------------ audio


def _band_energy(wave: np.ndarray, lo: float, hi: float) -> float:
    spectrum = np.abs(np.fft.rfft(wave * np.hanning(len(wave)))) ** 2
    freqs = np.fft.rfftfreq(len(wave), 1 / 16_000)
    return float(spectrum[(freqs >= lo) & (freqs <= hi)].sum())


def test_mix_has_each_class_pitch_when_it_sounds_and_silence_otherwise():
    loud = {
        "circle": [1.0, 0, 0, 0],
        "square": [0, 1.0, 0, 0],
        "triangle": [0, 0, 0.6, 0],
    }
    objects = tuple(
        SceneObject(i, cls, "red", 8.0, 0.0, np.zeros((4, 2)), np.asarray(gains, float), 11 + i)
        for i, (cls, gains) in enumerate(loud.items())
    )
    scene = Scene(0, 0, "train", 64, 4, objects, np.zeros((64, 64, 3), np.uint8))
    wave = mix_scene(scene)
    assert wave.dtype == np.float32 and wave.shape == (64_000,)
    pitches = {cls: class_pitch(cls) for cls in loud}
    assert pitches == {"circle": 196.0, "square": 622.0, "triangle": 2093.0}
    margin = 400  # skip the 20 ms ramps at the second boundaries
    for second, cls in enumerate(loud):
        chunk = wave[second * 16_000 + margin : (second + 1) * 16_000 - margin]
        f = pitches[cls]
        own = _band_energy(chunk, 0.95 * f, 1.05 * f)
        for other, g in pitches.items():
            if other != cls:
                assert own > 5 * _band_energy(chunk, 0.95 * g, 1.05 * g), (cls, other)
        rms = float(np.sqrt(np.mean(chunk.astype(float) ** 2)))
        assert rms == pytest.approx(0.08 * loud[cls][second], rel=0.2)
    silent = wave[3 * 16_000 + margin :]
    assert float(np.sqrt(np.mean(silent.astype(float) ** 2))) < 1e-3


def test_written_audio_and_avss_labels_follow_the_sounding_objects(dataset):
    out, manifest = dataset
    for vid, info in manifest["video_info"].items():
        wave, rate = sf.read(out / "refavs" / "media" / vid / "audio.wav", dtype="float32")
        assert rate == 16_000 and wave.shape == (160_000,)
        for second in range(10):
            sounding = [o for o in info["objects"] if second in o["sounding_seconds"]]
            chunk = wave[second * 16_000 + 400 : (second + 1) * 16_000 - 400]
            rms = float(np.sqrt(np.mean(chunk.astype(float) ** 2)))
            if not sounding:
                assert rms < 2e-3, (vid, second)
            else:
                assert rms > 0.01, (vid, second)
            rgb = np.asarray(Image.open(out / "avss" / "v2" / vid / "labels_rgb" / f"{second}.png").convert("RGB"))
            colours = {tuple(int(v) for v in c) for c in rgb.reshape(-1, 3)} - {PASCAL[0]}
            index = {c.name: k + 1 for k, c in enumerate(CLASSES)}
            expected = {PASCAL[index[o["class"]]] for o in sounding}
            assert colours <= expected, (vid, second)


# ------------------------------------------------------------------------------------------------ layouts and readers


def test_counts_on_disk_equal_the_manifest(dataset):
    out, manifest = dataset
    rows = _refavs_rows(out)
    for split, counts in manifest["layouts"]["refavs"]["splits"].items():
        mine = [r for r in rows if r["split"] == split]
        assert counts == {
            "videos": len({r["vid"] for r in mine}),
            "items": len(mine),
            "null_items": sum(r["uid"].startswith("null_") for r in mine),
            "labelled_frames": 10 * len(mine),
        }
    with open(out / "avss" / "metadata.csv", newline="") as f:
        avss = Counter(r["split"] for r in csv.DictReader(f))
    assert {s: c["items"] for s, c in manifest["layouts"]["avss"]["splits"].items()} == dict(avss)
    label2idx = json.loads((out / "avss" / "label2idx.json").read_text())
    assert sorted(label2idx.values()) == list(range(71)) and label2idx["background"] == 0
    for split, counts in manifest["layouts"]["rvos"]["splits"].items():
        videos = json.loads((out / "rvos" / split / "meta_expressions.json").read_text())["videos"]
        assert counts["items"] == sum(len(v["expressions"]) for v in videos.values())
    assert "test_n" not in manifest["layouts"]["rvos"]["splits"]
    assert sum(c["videos"] for c in manifest["layouts"]["avss"]["splits"].values()) == N


def test_rvos_holds_only_visual_expressions(dataset):
    _out, manifest = dataset
    visual = {e["rvos_uid"] for e in manifest["expressions"].values() if e["rvos_uid"]}
    for _uid, entry in manifest["expressions"].items():
        assert (entry["rvos_uid"] is not None) == (entry["modalities"] == "visual" and entry["target"] is not None)
    assert len(visual) == sum(c["items"] for c in manifest["layouts"]["rvos"]["splits"].values())


@pytest.mark.parametrize("layout", ["refavs", "avss", "rvos"])
def test_readers_check_ok_with_manifest_counts(dataset, layout):
    out, manifest = dataset
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a clean tree raises no DatasetWarning
        reader = READERS[layout](out / layout)
        report = reader.check()
    assert report.ok, (report.missing[:3], report.unreadable[:3])
    assert {s: vars(c) for s, c in report.splits.items()} == manifest["layouts"][layout]["splits"]


def test_readers_load_samples_with_the_right_content(dataset):
    out, manifest = dataset
    refavs = RefAVSReader(out / "refavs")
    for record in refavs.index("train")[:3] + refavs.index("test_n")[:1]:
        sample = refavs.load(record)
        assert tuple(sample.frames.shape) == (10, 3, SIZE, SIZE) and tuple(sample.masks.shape) == (10, SIZE, SIZE)
        assert tuple(sample.audio_examples.shape) == (10, 1, 96, 64)
        entry = manifest["expressions"][record.uid]
        assert sample.modalities == tuple(entry["modalities"].split("+"))
        assert sample.is_null == (entry["target"] is None) == (not sample.masks.any())
    avss = AVSSReader(out / "avss")
    record = avss.index("train")[0]
    sample = avss.load(record)
    info = manifest["video_info"][record.video_id]
    _frames, labels = render_scene(generate_scene(SEED, info["index"], size=SIZE))
    for t in range(10):
        expected = np.zeros((SIZE, SIZE), np.uint8)
        for o in info["objects"]:
            if t in o["sounding_seconds"]:
                expected[labels[t] == o["fid"] + 1] = [c.name for c in CLASSES].index(o["class"]) + 1
        assert np.array_equal(sample.masks[t].numpy(), expected)
    rvos = RVOSReader(out / "rvos")
    record = rvos.index("val")[0]
    sample = rvos.load(record)
    assert tuple(sample.frames.shape) == (10, 3, SIZE, SIZE) and sample.masks.any()
    assert sample.frame_names == tuple(f"{i:05d}" for i in range(10))


# ------------------------------------------------------------------------------------------------ VOS layout


@pytest.fixture(scope="module")
def with_vos(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("synthav_vos") / "out"
    assert synth(out, videos=N, seed=SEED, size=SIZE, frames=10, workers=1, layouts=LAYOUTS) == 0
    return out, json.loads((out / "manifest.json").read_text())


def test_vos_is_written_only_when_asked_and_leaves_the_other_layouts_unchanged(dataset, with_vos):
    out, manifest = dataset
    assert DEFAULT_LAYOUTS == ("refavs", "avss", "rvos") and not (out / "vos").exists()
    assert set(manifest["layouts"]) == set(DEFAULT_LAYOUTS)
    both, manifest_vos = with_vos
    default, more = _tree_hashes(out), _tree_hashes(both)
    assert {k: v for k, v in more.items() if not k.startswith("vos/") and k != "manifest.json"} == {
        k: v for k, v in default.items() if k != "manifest.json"
    }
    assert {k: v for k, v in manifest_vos.items() if k != "layouts"} == {
        k: v for k, v in manifest.items() if k != "layouts"
    }
    assert {k: v for k, v in manifest_vos["layouts"].items() if k != "vos"} == manifest["layouts"]


def test_vos_layout_reads_back_with_every_object_on_every_frame(with_vos):
    out, manifest = with_vos
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a clean tree raises no DatasetWarning
        reader = VOSReader(out / "vos")
        report = reader.check()
    assert report.ok, (report.missing[:3], report.unreadable[:3])
    assert {s: vars(c) for s, c in report.splits.items()} == manifest["layouts"]["vos"]["splits"]
    assert set(reader.splits()) == set(SPLITS)
    checked = 0
    for split in ("train", "test_n"):
        for record in reader.index(split):
            info = manifest["video_info"][record.video_id]
            _frames, labels = render_scene(generate_scene(SEED, info["index"], size=SIZE))
            fid = int(record.object_id) - 1
            visible = [t for t in range(10) if (labels[t] == fid + 1).any()]
            sample = reader.load(record)
            assert np.array_equal(sample.masks.numpy(), (labels == fid + 1).astype(np.uint8))
            assert sample.label_valid.all() and sample.meta["first_frame"] == visible[0]
            assert sample.meta["category"] == info["objects"][fid]["class"]
            assert sample.frame_names == tuple(f"{t:05d}" for t in range(10)) and not sample.has_audio
            for t in (0, 9):
                jpeg = out / "vos" / split / "JPEGImages" / record.video_id / f"{t:05d}.jpg"
                assert (
                    jpeg.read_bytes() == (out / "refavs/media" / record.video_id / "frames" / f"{t}.jpg").read_bytes()
                )
            checked += 1
    videos = {vid: info for vid, info in manifest["video_info"].items() if info["split"] in ("train", "test_n")}
    assert checked == sum(len(info["objects"]) for info in videos.values())  # every object of every video


def test_layouts_option_selects_what_is_written(tmp_path, capsys):
    out = tmp_path / "only_vos"
    assert (
        main(
            [
                "data",
                "synth",
                str(out),
                "--videos",
                "5",
                "--size",
                "32",
                "--frames",
                "3",
                "--workers",
                "1",
                "--layouts",
                "vos",
            ]
        )
        == 0
    )
    assert sorted(p.name for p in out.iterdir()) == ["manifest.json", "vos"]
    assert list(json.loads((out / "manifest.json").read_text())["layouts"]) == ["vos"]
    assert f"check with: avseg data check {out / 'vos'} --format vos" in capsys.readouterr().out
    assert VOSReader(out / "vos").check().ok
    with pytest.raises(ValueError, match=r"--layouts must name one or more of refavs, avss, rvos, vos, got \['voss'\]"):
        synth(tmp_path / "bad", videos=1, size=32, layouts=("voss",))
    with pytest.raises(ValueError, match="--layouts must name one or more"):
        synth(tmp_path / "bad", videos=1, size=32, layouts=())


def test_extra_training_videos_add_to_train_and_leave_every_other_video_as_it_was(tmp_path, capsys):
    from avseg.data.synthav.references import manifest_scene
    from avseg.data.synthav.writers import generation_settings

    plain, extra = tmp_path / "plain", tmp_path / "extra"
    synth(plain, videos=5, seed=SEED, size=32, frames=2, workers=1, layouts=("refavs",))
    args = ["data", "synth", str(extra), "--videos", "5", "--extra-train-videos", "8", "--seed", str(SEED)]
    assert main([*args, "--size", "32", "--frames", "2", "--workers", "2", "--layouts", "refavs", "--quiet"]) == 0
    assert "5 videos (+8 extra training videos)" in capsys.readouterr().out
    manifest = json.loads((extra / "manifest.json").read_text())
    assert manifest["videos"] == 13 and manifest["extra_train_videos"] == 8
    settings = {"videos": 5, "extra_train_videos": 8, "seed": SEED, "size": 32, "frames": 2}
    assert generation_settings(manifest) == settings
    # Indices 5..12 are all train, though the cycle would put 11 and 12 in val and test_s.
    assert [split_for_index(i) for i in (11, 12)] == ["val", "test_s"]
    splits = {info["index"]: info["split"] for info in manifest["video_info"].values()}
    assert [splits[i] for i in range(13)] == [split_for_index(i) for i in range(5)] + ["train"] * 8
    assert manifest["layouts"]["refavs"]["splits"]["train"]["videos"] == 1 + 8
    for split in ("val", "test_s", "test_u", "test_n"):
        assert manifest["layouts"]["refavs"]["splits"][split]["videos"] == 1
    # The first five videos and every non-train metadata row are those of the plain run.
    a, b = _tree_hashes(plain), _tree_hashes(extra)
    media = [k for k in a if k.startswith("refavs/media/")]
    assert media and all(a[k] == b[k] for k in media)
    plain_rows, extra_rows = _refavs_rows(plain), _refavs_rows(extra)
    assert [r for r in extra_rows if r["split"] != "train"] == [r for r in plain_rows if r["split"] != "train"]
    # An extra video is a training scene (never the held-out class), and the manifest regenerates it.
    vid = next(v for v, info in manifest["video_info"].items() if info["index"] == 12)
    scene = manifest_scene(manifest, vid)
    assert scene.split == "train" and HELD_OUT_CLASS not in [o.cls for o in scene.objects]
    assert [(o.cls, o.colour) for o in scene.objects] == [
        (o["class"], o["colour"]) for o in manifest["video_info"][vid]["objects"]
    ]
    on_disk = np.asarray(Image.open(extra / "refavs" / "media" / vid / "frames" / "0.jpg")).astype(int)
    other = next(v for v, info in manifest["video_info"].items() if info["index"] == 11)
    # Off by the JPEG round trip from its own render, far from another video's.
    errors = [np.abs(on_disk - render_scene(manifest_scene(manifest, v))[0][0]).mean() for v in (vid, other)]
    assert errors[0] < 10 and errors[1] > 2 * errors[0], errors
    with pytest.raises(ValueError, match="--extra-train-videos must be >= 0"):
        synth(tmp_path / "bad", videos=5, size=32, extra_train_videos=-1)
    with pytest.raises(ValueError, match="split must be one of"):
        generate_scene(SEED, 0, size=32, split="training")


# ------------------------------------------------------------------------------------------------ command


def test_synth_refuses_foreign_folder_and_replaces_its_own_output(tmp_path):
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match=r"notes\.txt"):
        synth(foreign, videos=5, size=32)
    out = tmp_path / "out"
    synth(out, videos=6, size=32, workers=1)
    assert (out / "avss" / "v2" / "synth00005").is_dir()
    synth(out, videos=5, size=32, workers=1)
    assert not (out / "avss" / "v2" / "synth00005").exists()
    assert json.loads((out / "manifest.json").read_text())["videos"] == 5
    with pytest.raises(ValueError, match="--videos"):
        synth(out, videos=0)


def test_synth_out_that_is_a_file_is_one_clear_line(tmp_path, capsys):
    plain = tmp_path / "notes.txt"
    plain.write_text("mine")
    for out, reason in ((plain, "is a file, not a folder"), (plain / "synth", f"{plain} is a file, not a folder")):
        status = main(["data", "synth", str(out), "--videos", "1", "--size", "32", "--workers", "1"])
        assert status == 2
        assert capsys.readouterr().err.strip().splitlines() == [f"avseg: error: OUT {out}: {reason}"]
    assert plain.read_text() == "mine"


def test_synth_shows_progress_over_videos_and_quiet_hides_it(tmp_path, capsys, monkeypatch):
    import avseg.progress

    monkeypatch.setattr(avseg.progress, "LOG_INTERVAL_S", 0.0)  # a progress line at every video
    args = ["data", "synth", str(tmp_path / "out"), "--videos", "3", "--size", "32", "--frames", "2"]
    assert main([*args, "--workers", "2", "--layouts", "rvos"]) == 0
    captured = capsys.readouterr()
    lines = captured.err.splitlines()
    assert [line.split(",")[0] for line in lines if line.startswith("generating SynthAV:")] == [
        "generating SynthAV: 1/3 videos (33%)",
        "generating SynthAV: 2/3 videos (67%)",
        "generating SynthAV: 3/3 videos (100%)",
    ]
    assert "videos/s, ETA" in lines[0]
    assert "3 videos, seed 0, 32x32, 2 frames" in captured.out  # the summary stays on stdout
    assert main([*args, "--workers", "1", "--layouts", "rvos", "--quiet"]) == 0
    captured = capsys.readouterr()
    assert "generating SynthAV" not in captured.err and "videos/s" not in captured.err
    assert "3 videos, seed 0, 32x32, 2 frames" in captured.out
