"""RVOS reader over the original Ref-YouTube-VOS layout (also Ref-DAVIS17 as ReferFormer converts it): expression
files in ``meta_expressions/{split}/``, ground truth from palette PNGs, and the errors and check findings of bad
trees."""

import json
import shutil
import warnings

import numpy as np
import pytest

from avseg.data.check import check
from avseg.data.readers import get_reader
from avseg.data.rvos import RVOSReader
from avseg.errors import DatasetWarning, MetadataError, MissingFileError
from tests.data.fixtures_rvos import PALETTE_SIZE, SIZE, write_palette_tree, write_rvos_tree

pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")


@pytest.fixture
def tree(tmp_path):
    return write_palette_tree(tmp_path)


def _record(reader, split, uid):
    return next(r for r in reader.index(split) if r.uid == uid)


def _expected(tree, split, vid, ids, frame_ids):
    """Reference: 1 where a written PNG holds one of ``ids``; None for frames without a PNG."""
    out = []
    for fid in frame_ids:
        array = tree.annotations[(split, vid)].get(fid)
        out.append(None if array is None else np.isin(array, ids).astype(np.uint8))
    return out


def _edit_expressions(tree, split, edit):
    path = tree.root / "meta_expressions" / split / "meta_expressions.json"
    data = json.loads(path.read_text())
    edit(data["videos"])
    path.write_text(json.dumps(data))
    return path


def test_layout_and_ground_truth_are_detected(tree):
    reader = get_reader("rvos", tree.root)
    assert isinstance(reader, RVOSReader) and reader.splits() == ["train", "valid"]
    assert reader.ground_truth("train") == "annotations" and reader.has_masks("train")
    assert reader.ground_truth("valid") is None
    assert [r.uid for r in reader.index("train")] == ["vidP/0", "vidP/1", "vidP/2", "vidP/3", "vidQ/0"]
    rec = _record(reader, "train", "vidP/0")
    assert rec.extra["frame_ids"] == ("00000", "00005", "00010", "00015")  # sorted, as ReferFormer and Sa2VA do
    assert rec.frame_paths[0] == tree.root / "train/JPEGImages/vidP/00000.jpg"
    assert rec.extra["palette_ids"] == [1] and rec.object_id == "1" and rec.text == "the left dog"


def test_masks_are_the_object_id_in_the_palette_pngs(tree):
    reader = RVOSReader(tree.root)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # frames listed out of order are harmless here: PNGs are found by name
        sample = reader.load(_record(reader, "train", "vidP/0"))
    expected = _expected(tree, "train", "vidP", [1], tree.frame_ids[("train", "vidP")])
    # 00010 has no PNG: unlabelled (and zeros); the others are ground truth.
    assert sample.label_valid.tolist() == [True, True, False, True]
    for t, m in enumerate(expected):
        np.testing.assert_array_equal(sample.masks[t].numpy(), np.zeros(SIZE, np.uint8) if m is None else m)
    assert sample.frame_names == ("00000", "00005", "00010", "00015") and sample.meta["obj_ids"] == ["1"]
    assert not sample.has_audio and sample.meta["type_id"] is None


def test_absent_object_on_an_annotated_frame_is_empty_ground_truth(tree):
    reader = RVOSReader(tree.root)
    sample = reader.load(_record(reader, "train", "vidP/1"))  # object 2, not on 00005
    assert sample.label_valid.tolist() == [True, True, False, True]
    assert sample.masks[1].eq(0).all() and sample.masks[0].sum() == 4 * 6


def test_several_obj_ids_are_united_and_void_is_background(tree):
    reader = RVOSReader(tree.root)
    sample = reader.load(_record(reader, "train", "vidP/2"))  # objects 1 and 3
    last = _expected(tree, "train", "vidP", [1, 3], ["00015"])[0]
    np.testing.assert_array_equal(sample.masks[3].numpy(), last)
    assert sample.masks[3].sum() == 4 * 4 + 3 * 5 and sample.masks[3, -1].eq(0).all()  # 255 strip is not an object


def test_native_masks_at_the_png_size(tree):
    reader = RVOSReader(tree.root, native_masks=True)
    sample = reader.load(_record(reader, "train", "vidQ/0"))
    expected = np.stack(_expected(tree, "train", "vidQ", [1], ["0", "1"]))
    assert sample.native_masks.shape == (2, *PALETTE_SIZE) and sample.masks.shape == (2, *SIZE)
    np.testing.assert_array_equal(sample.native_masks.numpy(), expected)
    np.testing.assert_array_equal(sample.masks.numpy(), expected[:, ::2, ::2])


def test_split_without_annotations_loads_unlabelled(tree):
    reader = RVOSReader(tree.root)
    rec = reader.index("valid")[0]
    assert rec.labelled == (False, False)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        sample = reader.load(rec)
    assert sample.label_valid.tolist() == [False, False] and sample.masks.eq(0).all()


def test_object_outside_the_kept_frames_is_not_an_error(tree):
    reader = RVOSReader(tree.root, max_frames=1)  # keeps 00000 only; object 3 appears on 00015
    sample = reader.load(_record(reader, "train", "vidP/3"))
    assert sample.frame_names == ("00000",) and sample.label_valid.tolist() == [True] and sample.masks.eq(0).all()
    reader = RVOSReader(tree.root, max_frames=2)
    sample = reader.load(_record(reader, "train", "vidP/3"))
    assert sample.frame_names == ("00000", "00015") and sample.masks[1].sum() == 3 * 5


def test_converted_ref_davis_split_with_annotations_is_labelled(tmp_path):
    # ReferFormer's conversion gives valid/ its Annotations too: same layout, ground truth present.
    tree = write_palette_tree(tmp_path)
    shutil.copytree(tree.root / "train/Annotations/vidQ", tree.root / "valid/Annotations/vidR")
    for fid, src in (("00000", "0"), ("00005", "1")):
        (tree.root / f"valid/Annotations/vidR/{src}.png").rename(tree.root / f"valid/Annotations/vidR/{fid}.png")
    reader = RVOSReader(tree.root)
    assert reader.ground_truth("valid") == "annotations"
    sample = reader.load(reader.index("valid")[0])
    assert sample.label_valid.all() and sample.masks.sum() > 0


# ------------------------------------------------------------------------------------------------------- errors


def test_missing_annotation_folder_names_it_and_the_expression(tree):
    folder = tree.root / "train/Annotations/vidQ"
    shutil.rmtree(folder)
    reader = RVOSReader(tree.root)
    with pytest.raises(MissingFileError, match=r"videos/vidQ/expressions/0 in .*meta_expressions.json") as err:
        reader.load(_record(reader, "train", "vidQ/0"))
    assert err.value.path == folder
    report = reader.check()
    assert not report.ok and [p for p, _ in report.missing] == [folder]


def test_obj_id_in_no_annotation_names_the_file_and_key(tree):
    path = _edit_expressions(tree, "train", lambda v: v["vidP"]["expressions"]["3"].update(obj_id="7"))
    reader = RVOSReader(tree.root)
    with pytest.raises(
        MetadataError, match=r"videos/vidP/expressions/3/obj_id: object 7 appears in no annotation"
    ) as err:
        reader.load(_record(reader, "train", "vidP/3"))
    assert err.value.path == path and "Annotations_unsupervised" in str(err.value)
    report = RVOSReader(tree.root).check()
    assert [(p, w.split(":")[0]) for p, w in report.missing] == [(path, "videos/vidP/expressions/3/obj_id")]


@pytest.mark.parametrize("obj_id", ["abc", "300", True])
def test_obj_id_that_is_not_a_palette_index(tree, obj_id):
    path = _edit_expressions(tree, "train", lambda v: v["vidQ"]["expressions"]["0"].update(obj_id=obj_id))
    with pytest.raises(MetadataError, match=r"videos/vidQ/expressions/0/obj_id") as err:
        RVOSReader(tree.root).index("train")
    assert err.value.path == path


def test_expression_without_obj_id(tree):
    _edit_expressions(tree, "train", lambda v: v["vidQ"]["expressions"]["0"].pop("obj_id"))
    with pytest.raises(MetadataError, match=r"expressions/0: has no 'obj_id'"):
        RVOSReader(tree.root).index("train")


def test_malformed_expression_file_names_it(tree):
    path = tree.root / "meta_expressions/train/meta_expressions.json"
    path.write_text('{"videos": ')
    with pytest.raises(MetadataError, match=r"invalid JSON") as err:
        RVOSReader(tree.root).index("train")
    assert err.value.path == path


def test_a_split_in_both_layouts_is_refused(tree):
    (tree.root / "train/meta_expressions.json").write_text('{"videos": {}}')
    with pytest.raises(MetadataError, match=r"split 'train' also has .*train/meta_expressions.json"):
        RVOSReader(tree.root)


def test_mask_dict_is_preferred_over_annotations(tmp_path):
    rle_tree = write_rvos_tree(tmp_path)
    (rle_tree.root / "ytvos/Annotations/vidD").mkdir(parents=True)  # present but not read
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DatasetWarning)
        reader = RVOSReader(rle_tree.root)
        report = reader.check()
    assert reader.ground_truth("ytvos") == "mask_dict" and report.ok
    assert any("'ytvos': masks are read from mask_dict.json" in n for n in report.notes)


# -------------------------------------------------------------------------------------------------------- check


def test_check_clean_tree_and_cli(tree, capsys):
    report = RVOSReader(tree.root).check()
    assert report.ok, (report.missing, report.unreadable)
    counts = {s: (c.videos, c.items, c.labelled_frames) for s, c in report.splits.items()}
    assert counts == {"train": (2, 5, 4 * 3 + 2), "valid": (1, 1, 0)}
    assert any("'valid': no mask_dict.json and no Annotations/" in n for n in report.notes)
    assert check(tree.root, format="rvos") == 0
    out = capsys.readouterr().out
    assert "rvos dataset at" in out and "OK: no missing or unreadable files" in out


def test_check_lists_unreadable_pngs_that_records_reference(tree):
    png = tree.root / "train/Annotations/vidQ/1.png"
    png.write_bytes(b"not a png")
    report = RVOSReader(tree.root).check()
    assert [p for p, _ in report.unreadable] == [png] and not report.missing
