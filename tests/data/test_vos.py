"""VOS reader (DAVIS 2017, YouTube-VOS, MOSE): layout detection, palette ids, first-frame-only splits, late objects,
sparse annotations, native masks, max_frames, metadata errors and ``avseg data check``.

Expected masks come from the annotation PNGs read the way the official DAVIS loader reads them
(``np.array(Image.open(png))``, then ``== object id``), not from the reader's code path.
"""

import json
import shutil
import warnings

import numpy as np
import pytest
import torch
from PIL import Image

from avseg.cli import main
from avseg.data.base import EmptyDatasetError
from avseg.data.readers import get_reader
from avseg.data.types import collate
from avseg.data.vos import VOSReader
from avseg.errors import DatasetWarning, MetadataError, MissingFileError, UsageError
from tests.data.fixtures_vos import FULL_SIZE, SIZE, write_vos_tree


@pytest.fixture
def tree(tmp_path):
    return write_vos_tree(tmp_path)


def _sample(reader, split, uid):
    record = next(r for r in reader.index(split) if r.uid == uid)
    return reader.load(record)


def _official(png_dir, stems, object_id, size=SIZE):
    """Per stem: ``np.array(Image.open(png)) == id`` where the PNG exists, else zeros, and whether it exists."""
    masks, exists = [], []
    for stem in stems:
        png = png_dir / f"{stem}.png"
        exists.append(png.is_file())
        masks.append((np.array(Image.open(png)) == object_id).astype(np.uint8) if png.is_file() else np.zeros(size))
    return np.stack(masks).astype(np.uint8), exists


def _check(root, capsys, *extra):
    status = main(["data", "check", str(root), "--format", "vos", *extra])
    out, err = capsys.readouterr()
    return status, out, err


# ------------------------------------------------------------------------------------------------ index


def test_layouts_are_detected_with_their_splits_and_objects(tree):
    davis, ytvos = VOSReader(tree.davis), VOSReader(tree.ytvos)
    assert davis.layout == "davis" and davis.splits() == ["train", "val", "test-dev"]
    assert ytvos.layout == "youtube-vos" and ytvos.splits() == ["train", "valid"]
    assert [r.uid for r in davis.index("train")] == ["bear/1", "bear/3", "dogs/1"]
    assert [r.uid for r in davis.index("test-dev")] == ["swans/1", "swans/2"]
    assert [r.uid for r in ytvos.index("train")] == ["vidA/1", "vidA/3", "vidB/2"]
    record = davis.index("train")[1]
    assert record.object_id == "3" and record.video_id == "bear" and record.text is None and record.audio_path is None
    assert record.frame_paths == tuple(tree.davis / "JPEGImages/480p/bear" / f"{i:05d}.jpg" for i in range(4))
    assert davis.first_frame_only("test-dev") and not davis.first_frame_only("val")
    assert ytvos.first_frame_only("valid") and not ytvos.first_frame_only("train")
    assert isinstance(get_reader("vos", tree.ytvos, native_masks=True), VOSReader)


def test_unknown_split_and_bad_options(tree, tmp_path):
    with pytest.raises(UsageError, match=r"unknown split 'test' in .*ImageSets.*known splits"):
        VOSReader(tree.davis).index("test")
    with pytest.raises(UsageError, match="applies to DAVIS trees only"):
        VOSReader(tree.ytvos, resolution="Full-Resolution")
    with pytest.raises(UsageError, match="resolution must be one of"):
        VOSReader(tree.davis, resolution="1080p")
    with pytest.raises(ValueError, match="max_frames"):
        VOSReader(tree.davis, max_frames=0)
    (tmp_path / "empty").mkdir()
    with pytest.raises(EmptyDatasetError, match=r"ImageSets/2017/\{split\}\.txt"):
        VOSReader(tmp_path / "empty")


def test_bad_meta_json_names_the_file(tree):
    meta = tree.ytvos / "train" / "meta.json"
    meta.write_text("{not json")
    with pytest.raises(MetadataError, match=f"{meta}: invalid JSON"):
        VOSReader(tree.ytvos).index("train")
    meta.write_text(json.dumps({"videos": {"vidA": {"objects": {"x": {"frames": ["00000"]}}}}}))
    with pytest.raises(MetadataError, match=r"videos/vidA/objects: object id 'x' must be an integer 1\.\.254"):
        VOSReader(tree.ytvos).index("train")
    meta.write_text(json.dumps({"videos": {"vidA": {"objects": {"1": {"frames": []}}}}}))
    with pytest.raises(MetadataError, match="objects/1/frames: expected a non-empty list"):
        VOSReader(tree.ytvos).index("train")


# ------------------------------------------------------------------------------------------------ decoding: DAVIS


def test_davis_palette_ids_are_read_as_indices_with_non_contiguous_ids_and_void(tree):
    reader = VOSReader(tree.davis)
    png_dir = tree.davis / "Annotations/480p/bear"
    stems = tree.frames[("davis", "train", "bear")]
    first = Image.open(png_dir / "00000.png")
    # The stored colours of ids 1 and 3 are not their gray values: a reader converting to RGB or L would differ.
    assert first.mode == "P" and set(np.unique(np.asarray(first.convert("L")))) - {0, 1, 3, 255}
    for oid in (1, 3):
        sample = _sample(reader, "train", f"bear/{oid}")
        expected, exists = _official(png_dir, stems, oid)
        assert all(exists)
        assert torch.equal(sample.masks, torch.from_numpy(expected))
        assert sample.label_valid.all() and sample.frame_valid.all()
        assert not sample.masks[:, -1].any()  # the void strip is background
        assert sample.object_id == str(oid) and sample.uid == f"bear/{oid}" and sample.text is None
        assert sample.frame_names == tuple(stems) and sample.orig_size == SIZE
        assert sample.meta["first_frame"] == 0 and sample.meta["first_frame_name"] == "00000"
        assert sample.meta["layout"] == "davis" and sample.meta["category"] is None
        assert not sample.has_audio and not sample.audio_wave.any() and sample.native_masks is None
    late = _sample(reader, "train", "bear/3")
    assert late.masks[:3].flatten(1).any(1).all() and not late.masks[3].any()  # gone on the last frame, still labelled


def test_davis_test_dev_labels_only_the_first_frame(tree):
    sample = _sample(VOSReader(tree.davis), "test-dev", "swans/2")
    expected, _ = _official(tree.davis / "Annotations/480p/swans", ["00000"], 2)
    assert sample.label_valid.tolist() == [True, False, False]
    assert torch.equal(sample.masks[0], torch.from_numpy(expected[0])) and not sample.masks[1:].any()
    assert sample.masks[0].any()


def test_davis_full_resolution(tree):
    reader = VOSReader(tree.davis, resolution="Full-Resolution", native_masks=True, image_size=SIZE)
    sample = _sample(reader, "val", "cars/2")
    stems = tree.frames[("davis-full", "val", "cars")]
    expected, _ = _official(tree.davis / "Annotations/Full-Resolution/cars", stems, 2, FULL_SIZE)
    assert sample.orig_size == FULL_SIZE and tuple(sample.frames.shape) == (3, 3, *SIZE)
    assert torch.equal(sample.native_masks, torch.from_numpy(expected))


# ------------------------------------------------------------------------------------------------ decoding: YouTube-VOS


def test_youtube_object_entering_late_and_sparse_annotations(tree):
    reader = VOSReader(tree.ytvos)
    late = _sample(reader, "train", "vidA/3")
    expected, _ = _official(tree.ytvos / "train/Annotations/vidA", tree.frames[("ytvos", "train", "vidA")], 3)
    assert torch.equal(late.masks, torch.from_numpy(expected)) and not late.masks[0].any()
    assert late.label_valid.all()  # train annotates every frame: the object is known to be absent from 00000
    assert late.meta["first_frame"] == 1 and late.meta["first_frame_name"] == "00005" and late.meta["category"] == "cat"
    assert late.meta["layout"] == "youtube-vos"
    sparse = _sample(reader, "train", "vidB/2")
    stems = tree.frames[("ytvos", "train", "vidB")]
    expected, exists = _official(tree.ytvos / "train/Annotations/vidB", stems, 2)
    assert sparse.label_valid.tolist() == exists == [True, False, False, False, False, True]
    assert torch.equal(sparse.masks, torch.from_numpy(expected))
    assert sparse.frame_names == tuple(stems) and sparse.meta["category"] is None  # MOSE-style: no category


def test_youtube_valid_labels_each_object_on_its_first_frame_only(tree):
    reader = VOSReader(tree.ytvos)
    png_dir = tree.ytvos / "valid/Annotations/vidC"
    first = _sample(reader, "valid", "vidC/1")
    # 00005.png exists but shows only the object entering there: it is not ground truth for object 1.
    assert first.label_valid.tolist() == [True, False, False] and first.meta["first_frame"] == 0
    assert torch.equal(first.masks[0], torch.from_numpy(_official(png_dir, ["00000"], 1)[0][0]))
    assert not first.masks[1:].any()
    entering = _sample(reader, "valid", "vidC/2")
    assert entering.label_valid.tolist() == [False, True, False] and entering.meta["first_frame"] == 1
    assert torch.equal(entering.masks[1], torch.from_numpy(_official(png_dir, ["00005"], 2)[0][0]))
    assert entering.masks[1].any() and not entering.masks[[0, 2]].any()


def test_native_masks_are_the_pngs_at_disk_size_when_frames_are_resized(tree):
    reader = VOSReader(tree.ytvos, image_size=(6, 8), native_masks=True)
    sample = _sample(reader, "train", "vidB/2")
    stems = tree.frames[("ytvos", "train", "vidB")]
    expected, exists = _official(tree.ytvos / "train/Annotations/vidB", stems, 2)
    assert tuple(sample.frames.shape) == (6, 3, 6, 8) and tuple(sample.masks.shape) == (6, 6, 8)
    assert sample.native_masks.dtype == torch.uint8 and torch.equal(sample.native_masks, torch.from_numpy(expected))
    assert not sample.native_masks[~torch.tensor(exists)].any()
    # Halving with nearest-exact samples the odd rows and columns of the disk-size mask.
    assert torch.equal(sample.masks, sample.native_masks[:, 1::2, 1::2])
    batch = collate([sample, _sample(reader, "train", "vidA/1")])
    assert [tuple(m.shape) for m in batch.native_masks] == [(6, *SIZE), (6, *SIZE)]


def test_max_frames_spreads_from_the_first_annotated_frame(tree):
    reader = VOSReader(tree.ytvos, max_frames=3)
    sparse = _sample(reader, "train", "vidB/2")
    assert sparse.frame_names == ("00000", "00003", "00005") and sparse.label_valid.tolist() == [True, False, True]
    late = _sample(VOSReader(tree.ytvos, max_frames=2), "train", "vidA/3")
    assert late.frame_names == ("00005", "00010") and late.meta["first_frame"] == 0 and late.masks[0].any()
    whole = _sample(VOSReader(tree.ytvos, max_frames=10), "train", "vidA/3")
    assert whole.frame_names == ("00005", "00010")  # frames before the object's first one are never kept


# ------------------------------------------------------------------------------------------------ check


def test_check_of_clean_trees(tree, capsys):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        davis, ytvos = VOSReader(tree.davis).check(), VOSReader(tree.ytvos).check()
    assert davis.ok and ytvos.ok and davis.item_name == "objects"
    counts = {s: (c.videos, c.items, c.labelled_frames) for s, c in davis.splits.items()}
    assert counts == {"train": (2, 3, 4 + 4 + 3), "val": (1, 2, 6), "test-dev": (1, 2, 2)}
    counts = {s: (c.videos, c.items, c.labelled_frames) for s, c in ytvos.splits.items()}
    assert counts == {"train": (2, 3, 3 + 3 + 2), "valid": (1, 2, 2)}
    status, out, _ = _check(tree.davis, capsys)
    assert status == 0 and "OK: no missing or unreadable files" in out and "objects" in out


def test_check_reports_a_missing_annotation_by_path(tree, capsys):
    missing = tree.davis / "Annotations/480p/cars/00001.png"
    missing.unlink()
    status, out, _ = _check(tree.davis, capsys)
    assert status == 1 and f"  {missing}  (mask)" in out.splitlines()
    with pytest.raises(MissingFileError, match=str(missing)):
        _sample(VOSReader(tree.davis), "val", "cars/1")


def test_check_reports_absent_videos_and_frames_by_path(tree, capsys):
    (tree.davis / "ImageSets/2017/val.txt").write_text("cars\nghost\n")
    shutil.rmtree(tree.davis / "Annotations/480p/dogs")
    with pytest.warns(DatasetWarning, match="skipped 1 video"):
        reader = VOSReader(tree.davis)
        assert [r.uid for r in reader.index("val")] == ["cars/1", "cars/2"]
    status, out, _ = _check(tree.davis, capsys)
    lines = out.splitlines()
    assert status == 1
    assert any(line.startswith(f"  {tree.davis / 'JPEGImages/480p/ghost'}  (frame folder") for line in lines)
    assert any(line.startswith(f"  {tree.davis / 'Annotations/480p/dogs/00000.png'}  (mask") for line in lines)

    meta_path = tree.ytvos / "train" / "meta.json"
    meta = json.loads(meta_path.read_text())
    meta["videos"]["vidZ"] = {"objects": {"1": {"frames": ["00000"]}}}
    meta_path.write_text(json.dumps(meta))
    (tree.ytvos / "train/JPEGImages/vidA/00010.jpg").unlink()
    with pytest.warns(DatasetWarning, match="skipped 1 video"):  # vidZ; vidA loses one frame but is kept
        assert [r.uid for r in VOSReader(tree.ytvos).index("train")] == ["vidA/1", "vidA/3", "vidB/2"]
    status, out, _ = _check(tree.ytvos, capsys)
    lines = out.splitlines()
    assert status == 1
    assert any(line.startswith(f"  {tree.ytvos / 'train/JPEGImages/vidZ'}  (frame folder") for line in lines)
    assert f"  {tree.ytvos / 'train/JPEGImages/vidA/00010.jpg'}  (frame listed in {meta_path})" in lines


def test_check_reports_objects_of_meta_json_absent_from_their_annotations(tree, capsys):
    meta_path = tree.ytvos / "train" / "meta.json"
    meta = json.loads(meta_path.read_text())
    meta["videos"]["vidA"]["objects"]["4"] = {"frames": ["00000", "00005"]}  # in no PNG
    meta["videos"]["vidA"]["objects"]["3"]["frames"] = ["00000", "00005", "00010"]  # really enters at 00005
    meta_path.write_text(json.dumps(meta))
    report = VOSReader(tree.ytvos).check()
    png = tree.ytvos / "train/Annotations/vidA/00000.png"
    assert report.missing == [
        (png, f"object 3 listed in {meta_path}: absent from its first annotated frame; it first appears in 00005.png"),
        (
            png,
            f"object 4 listed in {meta_path}: absent from its first annotated frame; "
            "it is in no annotation of the video",
        ),
    ]
    status, out, _ = _check(tree.ytvos, capsys)
    assert status == 1 and f"  {png}  (object 4 listed in {meta_path}" in out
    with pytest.warns(DatasetWarning, match=f"{png}: object 4 of video 'vidA' is absent from its first annotated"):
        _sample(VOSReader(tree.ytvos), "train", "vidA/4")


def test_check_of_an_empty_root_is_one_line(tmp_path, capsys):
    status, out, err = _check(tmp_path, capsys)
    assert status == 1 and out == ""
    assert err.strip().splitlines() == [
        f"avseg: error: {tmp_path}: empty vos dataset: {tmp_path / 'ImageSets/2017/*.txt'} or "
        f"{tmp_path / '*/meta.json'} yields no objects (no DAVIS split list (ImageSets/2017/{{split}}.txt) and no "
        "YouTube-VOS split folder ({split}/meta.json))"
    ]
