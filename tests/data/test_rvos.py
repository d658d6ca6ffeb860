"""RVOS reader (MeViS / Sa2VA JSON layout): union of anno_ids, null RLEs, frame order, unlabelled splits,
Ref-YouTube-VOS obj_id keys, max_frames, JSON errors, ReVOS's foreground and check()."""

import json
import warnings

import numpy as np
import pycocotools.mask as coco
import pytest
import torch

from avseg.data import rle
from avseg.data.readers import get_reader
from avseg.data.rvos import RVOSReader, subsample_indices
from avseg.errors import DatasetWarning, MetadataError, MissingFileError
from tests.data.fixtures_rvos import SIZE, write_revos_tree, write_rvos_tree

pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")


@pytest.fixture
def tree(tmp_path):
    return write_rvos_tree(tmp_path)


def _reader(tree, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DatasetWarning)  # vidB's frame order, tested on its own
        reader = RVOSReader(tree.root, **kwargs)
        for split in reader.splits():
            reader.index(split)
    return reader


def _record(reader, split, uid):
    return next(r for r in reader.index(split) if r.uid == uid)


def _coco_union(tree, split, keys, positions):
    """Reference: decode the stored JSON RLEs with pycocotools and OR them."""
    stored = json.loads((tree.root / split / "mask_dict.json").read_text())
    out = np.zeros((len(positions), *SIZE), dtype=np.uint8)
    for key in keys:
        for t, pos in enumerate(positions):
            entry = stored[key][pos]
            if entry is not None:
                out[t] |= coco.decode({"size": entry["size"], "counts": entry["counts"].encode()})
    return out


def test_splits_and_counts(tree):
    reader = _reader(tree)
    assert reader.splits() == ["train", "valid", "ytvos"]
    assert [len(reader.index(s)) for s in reader.splits()] == [3, 2, 2]
    rec = _record(reader, "train", "vidA/0")
    assert rec.text == "the two dogs" and rec.video_id == "vidA" and rec.audio_path is None
    assert rec.frame_paths == tuple(
        tree.root / "train/JPEGImages/vidA" / f"{f}.jpg" for f in ("00000", "00005", "00010")
    )
    assert rec.extra["anno_ids"] == ["0", "1"] and rec.object_id == "0,1"


def test_union_of_anno_ids(tree):
    reader = _reader(tree)
    sample = reader.load(_record(reader, "train", "vidA/0"))
    assert sample.frames.shape == (3, 3, *SIZE) and sample.masks.shape == (3, *SIZE)
    expected = _coco_union(tree, "train", ["0", "1"], [0, 1, 2])
    np.testing.assert_array_equal(sample.masks.numpy(), expected)
    # The union really has both objects: more foreground than either alone.
    assert sample.masks[0].sum() == tree.masks[("train", "0")][0].sum() + tree.masks[("train", "1")][0].sum()
    assert sample.label_valid.all() and sample.frame_valid.all()
    assert sample.text == "the two dogs" and sample.uid == "vidA/0"
    assert sample.frame_names == ("00000", "00005", "00010") and sample.orig_size == SIZE
    assert sample.meta == {"exp_id": "0", "anno_ids": ["0", "1"], "obj_ids": ["0", "1"], "type_id": None}


def test_null_rle_entry_is_an_empty_labelled_mask(tree):
    reader = _reader(tree)
    sample = reader.load(_record(reader, "train", "vidA/1"))
    assert sample.masks[1].eq(0).all()
    assert sample.label_valid.tolist() == [True, True, True]
    np.testing.assert_array_equal(sample.masks[0].numpy(), tree.masks[("train", "2")][0])
    np.testing.assert_array_equal(sample.masks[2].numpy(), tree.masks[("train", "2")][2])


def test_frames_out_of_order_are_sorted_with_warning(tree):
    reader = RVOSReader(tree.root)
    with pytest.warns(DatasetWarning, match=r"1 video\(s\) list their frames out of order"):
        records = reader.index("train")
    rec = next(r for r in records if r.video_id == "vidB")
    assert [p.stem for p in rec.frame_paths] == ["00000", "00005", "00010", "00015"]
    sample = reader.load(rec)
    # Mask list positions follow the sorted frame ids: frame 00015 (last sorted) gets the 4th entry.
    np.testing.assert_array_equal(sample.masks.numpy(), _coco_union(tree, "train", ["3"], [0, 1, 2, 3]))
    assert sample.masks[3, 0, 12:14].eq(1).all()
    assert sample.object_id == "5" and sample.meta["type_id"] == 1  # ReVOS expression type, passed through


def test_split_without_mask_dict_loads_unlabelled(tree):
    reader = _reader(tree)
    rec = reader.index("valid")[0]
    assert rec.labelled == (False, False)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        sample = reader.load(rec)
    assert sample.label_valid.tolist() == [False, False] and sample.masks.eq(0).all()
    assert sample.text == "the left car" and sample.object_id is None


def test_no_audio(tree):
    reader = _reader(tree)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        sample = reader.load(_record(reader, "train", "vidB/0"))
    assert not sample.has_audio
    assert sample.audio_examples.shape == (4, 1, 96, 64) and sample.audio_wave.shape == (4 * 16000,)
    assert sample.audio_wave.eq(0).all()


def test_refytvos_obj_id_keys(tree):
    reader = _reader(tree)
    rec = _record(reader, "ytvos", "vidD/1")
    assert rec.extra["mask_keys"] == ["vidD/2"] and rec.extra["mask_key_source"] == "obj_id"
    sample = reader.load(rec)
    assert sample.masks[0].eq(0).all()  # null entry
    np.testing.assert_array_equal(sample.masks[1].numpy(), tree.masks[("ytvos", "vidD/2")][1])


def test_refytvos_without_usable_key_explains(tree):
    path = tree.root / "ytvos" / "mask_dict.json"
    stored = json.loads(path.read_text())
    stored["0"] = stored.pop("vidD/1")  # a Sa2VA-style running-counter key
    path.write_text(json.dumps(stored))
    reader = _reader(tree)
    with pytest.raises(MetadataError, match=r"key 'vidD/1'.*running-counter") as err:
        reader.load(_record(reader, "ytvos", "vidD/0"))
    assert err.value.path == path


def test_max_frames_subsamples_uniformly(tree):
    assert subsample_indices(4, 2) == [0, 3]
    assert subsample_indices(4, 3) == [0, 2, 3]  # positions 0, 1.5, 3 -> floor(x + 0.5)
    assert subsample_indices(10, 4) == [0, 3, 6, 9]
    assert subsample_indices(3, 5) == [0, 1, 2] and subsample_indices(5, 1) == [0]
    assert subsample_indices(7, None) == list(range(7))
    reader = _reader(tree, max_frames=2)
    rec = _record(reader, "train", "vidB/0")
    assert rec.num_frames == 2 and rec.extra["frame_ids"] == ("00000", "00015")
    sample = reader.load(rec)
    np.testing.assert_array_equal(sample.masks.numpy(), _coco_union(tree, "train", ["3"], [0, 3]))
    assert sample.frame_names == ("00000", "00015")
    with pytest.raises(ValueError, match=r"max_frames"):
        RVOSReader(tree.root, max_frames=0)


def test_image_size(tree):
    reader = _reader(tree, image_size=24)
    sample = reader.load(_record(reader, "train", "vidA/0"))
    assert sample.frames.shape == (3, 3, 24, 24) and sample.masks.shape == (3, 24, 24)
    assert set(torch.unique(sample.masks).tolist()) == {0, 1}
    assert sample.orig_size == SIZE


def test_get_reader_by_format(tree):
    reader = get_reader("rvos", tree.root, max_frames=None, image_size=None)
    assert isinstance(reader, RVOSReader) and reader.item_name == "expressions"


# ------------------------------------------------------------------------------------------------------- errors


def test_missing_root_layout(tmp_path):
    with pytest.raises(MissingFileError, match=r"meta_expressions.json"):
        RVOSReader(tmp_path)


def test_invalid_json_names_the_file(tree):
    path = tree.root / "valid" / "meta_expressions.json"
    path.write_text('{"videos": {"vidC": ')
    with pytest.raises(MetadataError, match=r"invalid JSON") as err:
        RVOSReader(tree.root).index("valid")
    assert err.value.path == path


@pytest.mark.parametrize(
    ("videos", "match"),
    [
        ({"vidC": {"frames": [], "expressions": {}}}, "videos/vidC/frames: expected a non-empty list"),
        ({"vidC": {"frames": ["0", "0"], "expressions": {}}}, "frame id '0' is listed twice"),
        ({"vidC": {"frames": ["0"], "expressions": {"7": {"text": "x"}}}}, "videos/vidC/expressions/7: missing"),
        ({"vidC": {"frames": ["0"], "expressions": {"7": {"exp": "x", "anno_id": [1.5]}}}}, "expressions/7/anno_id"),
        ({"vidC": {"frames": ["0"]}}, "videos/vidC/expressions: expected an object"),
        ({"vidC": {"frames": ["0"], "expressions": {"7": {"exp": "x", "type_id": "1"}}}}, "expressions/7/type_id"),
        ([1, 2], "'videos' object"),
    ],
)
def test_malformed_expressions_name_the_key(tree, videos, match):
    path = tree.root / "valid" / "meta_expressions.json"
    path.write_text(json.dumps(videos if isinstance(videos, list) else {"videos": videos}))
    with pytest.raises(MetadataError, match=match) as err:
        RVOSReader(tree.root).index("valid")
    assert err.value.path == path


def test_labelled_expression_without_ids(tree):
    path = tree.root / "ytvos" / "meta_expressions.json"
    data = json.loads(path.read_text())
    del data["videos"]["vidD"]["expressions"]["1"]["obj_id"]
    path.write_text(json.dumps(data))
    with pytest.raises(MetadataError, match=r"expressions/1: has neither 'anno_id' nor 'obj_id'"):
        RVOSReader(tree.root).index("ytvos")


def test_load_errors_name_mask_dict_and_key(tree):
    path = tree.root / "train" / "mask_dict.json"
    stored = json.loads(path.read_text())
    stored["2"][2]["counts"] = "!!"
    stored["3"] = stored["3"][:3]
    del stored["1"]
    path.write_text(json.dumps(stored))
    reader = _reader(tree)
    with pytest.raises(MetadataError, match=r"key '2', frame 2 \(00010\): bad RLE: .*invalid character '!'"):
        reader.load(_record(reader, "train", "vidA/1"))
    with pytest.raises(MetadataError, match=r"key '3': 3 masks for the 4 frames of video 'vidB'"):
        reader.load(_record(reader, "train", "vidB/0"))
    with pytest.raises(MetadataError, match=r"key '1' \(anno_id of expression 'vidA/0'\) not found"):
        reader.load(_record(reader, "train", "vidA/0"))


def test_missing_frame_on_load(tree):
    (tree.root / "train/JPEGImages/vidA/00005.jpg").unlink()
    reader = _reader(tree)
    with pytest.raises(MissingFileError, match=r"00005.jpg"):
        reader.load(_record(reader, "train", "vidA/0"))


# -------------------------------------------------------------------------------------------------------- check


def test_check_clean_tree(tree):
    report = _reader(tree).check()
    assert report.ok, (report.missing, report.unreadable)
    assert {s: (c.videos, c.items, c.labelled_frames) for s, c in report.splits.items()} == {
        "train": (2, 3, 3 + 3 + 4),
        "valid": (1, 2, 0),
        "ytvos": (1, 2, 4),
    }
    assert any("'valid': no mask_dict.json" in n for n in report.notes)


def test_check_lists_mask_problems(tree):
    path = tree.root / "train" / "mask_dict.json"
    stored = json.loads(path.read_text())
    stored["2"][0]["counts"] = "1p"  # bad character
    stored["0"][1] = {"size": list(SIZE), "counts": "3"}  # counts do not sum to H*W
    stored["3"].append(None)  # 5 masks for 4 frames
    del stored["1"]
    path.write_text(json.dumps(stored))
    missing_jpg = tree.root / "ytvos/JPEGImages/vidD/00005.jpg"
    missing_jpg.unlink()
    for deep in (False, True):
        report = _reader(tree).check(deep=deep)
        assert not report.ok
        assert (missing_jpg, "frame") in report.missing
        mask_missing = [what for p, what in report.missing if p == path]
        assert len(mask_missing) == 1 and "'1'" in mask_missing[0] and "vidA/0" in mask_missing[0]
        reasons = sorted(r for p, r in report.unreadable if p == path)
        assert len(reasons) == 3
        assert any("key '2', frame 0: bad RLE" in r and "'p'" in r for r in reasons)
        assert any("key '0', frame 1: bad RLE" in r and "sum to 3" in r for r in reasons)
        assert any("key '3': 5 masks for the 4 frames" in r for r in reasons)


def test_check_reports_unparseable_mask_dict(tree):
    path = tree.root / "ytvos" / "mask_dict.json"
    path.write_text("{not json")
    report = _reader(tree).check()
    assert [p for p, _ in report.unreadable] == [path]
    assert "invalid JSON" in report.unreadable[0][1]


# ---------------------------------------------------------------------------------------------- ReVOS foreground


@pytest.fixture
def revos(tmp_path):
    return write_revos_tree(tmp_path)


def _coco_foreground(tree, vid, positions):
    """Reference: decode the stored foreground with pycocotools and sum a frame's RLEs, as eval_revos.py does."""
    stored = json.loads((tree.root / "valid" / "mask_dict_foreground.json").read_text())[vid]["masks_rle"]
    out = np.zeros((len(positions), *SIZE), dtype=np.uint8)
    for t, pos in enumerate(positions):
        entry = stored[pos]
        if entry is None:
            continue
        one = isinstance(entry, dict)
        rles = [{"size": e["size"], "counts": e["counts"].encode()} for e in ([entry] if one else entry)]
        decoded = coco.decode(rles[0] if one else rles)
        out[t] = decoded.sum(axis=2).astype(np.uint8) if decoded.ndim == 3 else decoded
    return out


def test_revos_foreground_is_the_object_count(revos):
    reader = RVOSReader(revos.root)
    assert reader.has_foreground("valid")
    sample = reader.load(_record(reader, "valid", "vidA/0"))
    foreground = sample.meta["foreground"]
    assert foreground.dtype == torch.uint8 and foreground.shape == (3, *SIZE)
    np.testing.assert_array_equal(foreground.numpy(), _coco_foreground(revos, "vidA", [0, 1, 2]))
    np.testing.assert_array_equal(foreground.numpy(), revos.foreground[("valid", "vidA")])
    # Objects 0 and 1 overlap on the first frame, stored one RLE each: the overlap counts both.
    assert foreground[0, 4, 4] == 2 and foreground[0].max() == 2
    assert foreground[1].max() == 1 and foreground[2].eq(0).all()  # a stored union; a null entry
    assert sample.meta["type_id"] == 0
    # Every expression of the video carries the same foreground; the slash vid reads its own entry.
    other = reader.load(_record(reader, "valid", "vidA/2"))
    assert torch.equal(other.meta["foreground"], foreground) and other.meta["type_id"] == 2
    bird = reader.load(_record(reader, "valid", "UVO/vidB/0"))
    np.testing.assert_array_equal(bird.meta["foreground"].numpy(), revos.foreground[("valid", "UVO/vidB")])
    # max_frames keeps the foreground of the kept frames only.
    kept = RVOSReader(revos.root, max_frames=2, image_size=24)
    sub = kept.load(_record(kept, "valid", "vidA/0"))
    np.testing.assert_array_equal(sub.meta["foreground"].numpy(), revos.foreground[("valid", "vidA")][[0, 2]])
    # The RLE's resolution, not the model's input size.
    assert sub.masks.shape == (2, 24, 24) and sub.meta["foreground"].shape == (2, *SIZE)


def test_the_expressions_of_a_video_decode_its_foreground_once(revos, monkeypatch):
    from avseg.data import rvos as rvos_module

    reader = RVOSReader(revos.root)
    decoded = []
    real_decode = rvos_module.rle.decode
    monkeypatch.setattr(rvos_module.rle, "decode", lambda entry: decoded.append(entry) or real_decode(entry))
    reader.load(_record(reader, "valid", "vidA/0"))
    first = len(decoded)
    second = reader.load(_record(reader, "valid", "vidA/2"))  # the same video: only its masks are decoded again
    np.testing.assert_array_equal(second.meta["foreground"].numpy(), revos.foreground[("valid", "vidA")])
    masks_only = len(decoded) - first
    reader.load(_record(reader, "valid", "UVO/vidB/0"))  # another video in between
    before = len(decoded)
    reader.load(_record(reader, "valid", "vidA/2"))  # vidA's foreground RLEs are decoded again
    assert len(decoded) - before > masks_only


def test_split_without_foreground_file_has_no_foreground(revos):
    (revos.root / "valid" / "mask_dict_foreground.json").unlink()
    reader = RVOSReader(revos.root)
    assert not reader.has_foreground("valid")
    sample = reader.load(_record(reader, "valid", "vidA/0"))
    assert sample.meta == {"exp_id": "0", "anno_ids": ["0"], "obj_ids": ["0"], "type_id": 0}


def test_foreground_at_another_size_is_resized_with_a_warning(revos):
    path = revos.root / "valid" / "mask_dict_foreground.json"
    stored = json.loads(path.read_text())
    bird = revos.foreground[("valid", "UVO/vidB")]
    stored["UVO/vidB"]["masks_rle"] = [rle.encode(np.kron(m, np.ones((2, 2), np.uint8))) for m in bird]
    path.write_text(json.dumps(stored))
    reader = RVOSReader(revos.root)
    with pytest.warns(DatasetWarning, match=r"key 'UVO/vidB': foreground size \(24, 32\) differs from \(12, 16\)"):
        sample = reader.load(_record(reader, "valid", "UVO/vidB/0"))
    np.testing.assert_array_equal(sample.meta["foreground"].numpy(), bird)


def test_foreground_errors_name_the_file_and_the_key(revos):
    path = revos.root / "valid" / "mask_dict_foreground.json"
    stored = json.loads(path.read_text())
    del stored["vidA"]
    stored["UVO/vidB"]["masks_rle"] = stored["UVO/vidB"]["masks_rle"][:1]
    path.write_text(json.dumps(stored))
    reader = RVOSReader(revos.root)
    with pytest.raises(MetadataError, match=r"key 'vidA' \(the video of expression 'vidA/1'\) not found") as err:
        reader.load(_record(reader, "valid", "vidA/1"))
    assert err.value.path == path and "\n" not in str(err.value)
    with pytest.raises(MetadataError, match=r"key 'UVO/vidB'/masks_rle: 1 masks for the 2 frames of the video") as err:
        reader.load(_record(reader, "valid", "UVO/vidB/0"))
    assert err.value.path == path and "\n" not in str(err.value)
    stored = json.loads(path.read_text())
    stored["vidA"] = {"masks_rle": [None, {"size": list(SIZE), "counts": "!!"}, None]}
    path.write_text(json.dumps(stored))
    reader = RVOSReader(revos.root)
    with pytest.raises(MetadataError, match=r"key 'vidA', frame 1 \(00005\): bad RLE: .*invalid character '!'"):
        reader.load(_record(reader, "valid", "vidA/0"))
    path.write_text("[1, 2]")
    with pytest.raises(MetadataError, match=r"top-level object keyed by video") as err:
        RVOSReader(revos.root).load(_record(reader, "valid", "vidA/0"))
    assert err.value.path == path


def test_check_lists_foreground_problems(revos):
    report = RVOSReader(revos.root).check(deep=True)
    assert report.ok, (report.missing, report.unreadable)
    path = revos.root / "valid" / "mask_dict_foreground.json"
    stored = json.loads(path.read_text())
    del stored["vidA"]
    stored["UVO/vidB"]["masks_rle"].append(None)  # 3 entries for 2 frames
    path.write_text(json.dumps(stored))
    report = RVOSReader(revos.root).check()
    assert not report.ok
    assert [(p, "'vidA'" in what) for p, what in report.missing] == [(path, True)]
    assert [(p, "3 masks for the 2 frames" in why) for p, why in report.unreadable] == [(path, True)]
    stored = json.loads(path.read_text())
    stored["UVO/vidB"]["masks_rle"] = [None, [{"size": list(SIZE), "counts": "3"}]]
    stored["vidA"] = {"masks_rle": [None, None, None]}
    path.write_text(json.dumps(stored))
    for deep in (False, True):
        report = RVOSReader(revos.root).check(deep=deep)
        assert report.missing == [] and len(report.unreadable) == 1
        assert report.unreadable[0][0] == path and "key 'UVO/vidB', frame 1: bad RLE" in report.unreadable[0][1]
    path.write_text("{not json")
    report = RVOSReader(revos.root).check()
    assert [p for p, _ in report.unreadable] == [path] and "invalid JSON" in report.unreadable[0][1]
