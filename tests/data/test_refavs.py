"""Ref-AVSBench reader: index quirks, decoding, resizing, checking and metadata errors."""

from __future__ import annotations

import csv
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from avseg.data.refavs import RefAVSReader, media_folder_name, null_kind
from avseg.data.types import collate
from avseg.errors import DatasetWarning, MetadataError, MissingFileError, ShapeError
from tests.data.fixtures_refavs import SIZES_HW, VID_A, VID_B, VID_C, RefAVSFixture, write_refavs_tree


@pytest.fixture
def tree(tmp_path: Path) -> RefAVSFixture:
    return write_refavs_tree(tmp_path / "refavs")


def quiet_reader(root: Path, **kwargs) -> RefAVSReader:
    """A reader whose metadata is already parsed, with the expected dataset warnings swallowed."""
    reader = RefAVSReader(root, **kwargs)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DatasetWarning)
        reader.splits()
    return reader


def by_uid(reader: RefAVSReader, split: str, uid: str):
    return next(r for r in reader.index(split) if r.uid == uid)


def test_splits_counts_and_quirk_warnings(tree: RefAVSFixture) -> None:
    reader = RefAVSReader(tree.root)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        splits = reader.splits()
    messages = [str(w.message) for w in caught if issubclass(w.category, DatasetWarning)]
    assert splits == ["train", "val", "test_s", "test_n"]  # fixed order; TODO is gone
    assert len(messages) == 2, messages
    assert any("dropped 2 row(s) with split 'TODO'" in m for m in messages)
    dup = next(m for m in messages if "repeats" in m)
    assert "dropped 2 row(s)" in dup and "train: 1" in dup and "test_s: 1" in dup
    assert all("metadata.csv" in m for m in messages)

    for split, expected in tree.counts.items():
        records = reader.index(split)
        assert len(records) == expected["items"], split
        assert len({r.video_id for r in records}) == expected["videos"], split
        assert sum(r.is_null for r in records) == expected["null_items"], split

    # Parsed once: indexing again warns no more.
    with warnings.catch_warnings(record=True) as again:
        warnings.simplefilter("always")
        reader.index("train")
    assert not again


def test_duplicate_keeps_first_row(tree: RefAVSFixture) -> None:
    reader = quiet_reader(tree.root)
    dogs = [r for r in reader.index("train") if r.uid == f"{VID_B}_dog_1"]
    assert len(dogs) == 1 and dogs[0].text == "the barking dog"


def test_keep_duplicate_rows_follows_the_csv(tree: RefAVSFixture) -> None:
    # The official loader is metadata[metadata['split'] == split]: every row of the split, in file order.
    with (tree.root / "metadata.csv").open(newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    reader = RefAVSReader(tree.root, keep_duplicate_rows=True)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        splits = reader.splits()
    messages = [str(w.message) for w in caught if issubclass(w.category, DatasetWarning)]
    assert not any("repeats" in m for m in messages) and any("'TODO'" in m for m in messages)
    for split in splits:
        expected = [(r["uid"], r["exp"], r["fid"]) for r in rows if r["split"] == split]
        assert [(r.uid, r.text, r.object_id) for r in reader.index(split)] == expected, split
    assert len(reader.index("train")) == tree.counts["train"]["items"] + tree.duplicates["train"]
    assert len(reader.index("test_s")) == tree.counts["test_s"]["items"] + tree.duplicates["test_s"]


def test_record_fields_and_null_folders(tree: RefAVSFixture) -> None:
    reader = quiet_reader(tree.root)
    guitar = by_uid(reader, "train", f"{VID_A}_guitar_2")
    assert guitar.video_id == VID_A and guitar.object_id == "1" and not guitar.is_null
    assert guitar.text == 'the guitar, "strummed" loudly'  # CSV quoting survives
    assert guitar.modalities == ("audio", "visual")
    assert guitar.frame_paths[0] == tree.root / "media" / VID_A / "frames" / "0.jpg"
    assert guitar.frame_paths[-1].name == "9.jpg" and len(guitar.frame_paths) == 10
    assert guitar.mask_refs[0] == tree.root / "gt_mask" / VID_A / "fid_1" / "00000.png"
    assert guitar.mask_refs[9].name == "00009.png"
    assert guitar.audio_path == tree.root / "media" / VID_A / "audio.wav"

    null = by_uid(reader, "test_n", f"null_m-{VID_B}_null_2")
    assert null.is_null and null.video_id == VID_B  # the vid column, not the folder
    assert null.extra["null_kind"] == "m" and null.extra["media_dir"] == f"null_m-{VID_B}"
    assert null.frame_paths[3] == tree.root / "media" / f"null_m-{VID_B}" / "frames" / "3.jpg"
    assert null.mask_refs[0] == tree.root / "gt_mask" / f"null_m-{VID_B}" / "fid_0" / "00000.png"
    assert null.labelled == (True,) * 10
    assert by_uid(reader, "val", f"{VID_C}_cat_1").modalities == ()


def test_uid_helpers() -> None:
    assert media_folder_name(f"{VID_A}_piano_1") == VID_A
    assert media_folder_name(f"null_c-{VID_A}_null_3") == f"null_c-{VID_A}"
    assert null_kind(f"null_c-{VID_A}_null_3") == "c"
    assert null_kind(f"null_m-{VID_A}_null_1") == "m"
    assert null_kind(f"{VID_A}_null_1") is None


def test_without_modalities_column(tmp_path: Path) -> None:
    tree = write_refavs_tree(tmp_path / "r", modalities=False, extra_column=False)
    reader = quiet_reader(tree.root)
    assert all(r.modalities == () for s in reader.splits() for r in reader.index(s))


def test_load_normal_sample(tree: RefAVSFixture) -> None:
    reader = quiet_reader(tree.root)
    record = by_uid(reader, "train", f"{VID_A}_guitar_2")
    sample = reader.load(record)
    h, w = SIZES_HW[VID_A]
    assert sample.frames.shape == (10, 3, h, w) and sample.frames.dtype == torch.uint8
    assert sample.masks.shape == (10, h, w) and sample.masks.dtype == torch.uint8
    assert sample.frame_valid.tolist() == [True] * 10 and sample.label_valid.tolist() == [True] * 10
    assert sample.orig_size == (h, w)
    assert sample.text == record.text and sample.uid == record.uid and sample.object_id == "1"
    assert sample.modalities == ("audio", "visual") and not sample.is_null and sample.has_audio
    assert sample.frame_names == tuple(str(i) for i in range(10))
    assert sample.audio_examples.shape == (10, 1, 96, 64) and sample.audio_examples.dtype == torch.float32
    assert sample.audio_wave.shape == (160_000,)  # 10 s resampled from 22.05 kHz to 16 kHz
    assert torch.isfinite(sample.audio_examples).all()
    # The fid_1 masks use gray value 1: only "> 0" gives the box.
    for i in (0, 7):
        gray = np.asarray(Image.open(record.mask_refs[i]))
        assert gray.max() == 1
        np.testing.assert_array_equal(sample.masks[i].numpy(), (gray > 0).astype(np.uint8))
        rgb = np.asarray(Image.open(record.frame_paths[i]).convert("RGB"))
        np.testing.assert_array_equal(sample.frames[i].permute(1, 2, 0).numpy(), rgb)
    assert set(sample.masks.unique().tolist()) == {0, 1}


def test_load_null_sample_reads_its_own_folder(tree: RefAVSFixture) -> None:
    reader = quiet_reader(tree.root)
    record = by_uid(reader, "train", f"null_c-{VID_A}_null_1")
    sample = reader.load(record)
    assert sample.is_null and sample.video_id == VID_A
    assert sample.masks.shape == (10, *SIZES_HW[VID_A]) and int(sample.masks.sum()) == 0
    assert sample.label_valid.all()
    rgb = np.asarray(Image.open(tree.root / "media" / f"null_c-{VID_A}" / "frames" / "4.jpg").convert("RGB"))
    np.testing.assert_array_equal(sample.frames[4].permute(1, 2, 0).numpy(), rgb)
    own = np.asarray(Image.open(tree.root / "media" / VID_A / "frames" / "4.jpg").convert("RGB"))
    assert not np.array_equal(rgb, own)  # the fixture's null folder differs from the video's folder


def test_null_mask_with_foreground_is_zeroed_with_warning(tree: RefAVSFixture) -> None:
    reader = quiet_reader(tree.root)
    record = by_uid(reader, "val", f"null_m-{VID_C}_null_1")
    bad = record.mask_refs[2]
    mask = np.zeros(SIZES_HW[VID_C], dtype=np.uint8)
    mask[3:6, 3:6] = 255
    Image.fromarray(mask).save(bad)
    with pytest.warns(DatasetWarning, match="has foreground") as caught:
        sample = reader.load(record)
    assert str(bad) in str(caught[0].message)
    assert int(sample.masks.sum()) == 0


def test_null_masks_zeros_option_needs_no_files(tree: RefAVSFixture) -> None:
    import shutil

    shutil.rmtree(tree.root / "gt_mask" / f"null_c-{VID_B}")
    reader = quiet_reader(tree.root, null_masks="zeros")
    record = by_uid(reader, "test_n", f"null_c-{VID_B}_null_1")
    assert record.mask_refs == (None,) * 10 and record.labelled == (True,) * 10
    report = reader.check()
    assert report.ok, report.missing
    assert report.splits["test_n"].labelled_frames == 20
    sample = reader.load(record)
    assert int(sample.masks.sum()) == 0 and sample.label_valid.all()
    # With the default the same copy is incomplete, and the checker names the first missing null mask.
    strict = quiet_reader(tree.root).check()
    assert (tree.root / "gt_mask" / f"null_c-{VID_B}" / "fid_0" / "00000.png", "mask") in strict.missing
    with pytest.raises(ValueError, match="null_masks"):
        RefAVSReader(tree.root, null_masks="ignore")  # type: ignore[arg-type]


def test_image_size_resizes_and_collates(tree: RefAVSFixture) -> None:
    raw = quiet_reader(tree.root)
    a = raw.load(by_uid(raw, "train", f"{VID_A}_piano_1"))
    b = raw.load(by_uid(raw, "train", f"{VID_B}_dog_1"))
    assert a.frames.shape[-2:] != b.frames.shape[-2:]
    with pytest.raises(ShapeError, match="image_size"):
        collate([a, b])

    reader = quiet_reader(tree.root, image_size=(16, 20))
    a = reader.load(by_uid(reader, "train", f"{VID_A}_piano_1"))
    b = reader.load(by_uid(reader, "train", f"{VID_B}_dog_1"))
    assert a.orig_size == SIZES_HW[VID_A] and b.orig_size == SIZES_HW[VID_B]
    batch = collate([a, b])
    assert batch.frames.shape == (2, 10, 3, 16, 20) and batch.masks.shape == (2, 10, 16, 20)
    assert set(batch.masks.unique().tolist()) == {0, 1}
    assert batch.text == [a.text, b.text] and batch.audio_examples.shape == (2, 10, 1, 96, 64)
    assert batch.frame_valid.all() and batch.label_valid.all()
    square = quiet_reader(tree.root, image_size=12)
    assert square.load(by_uid(square, "val", f"{VID_C}_cat_1")).frames.shape == (10, 3, 12, 12)


def test_check_names_missing_and_corrupt_files(tree: RefAVSFixture) -> None:
    reader = quiet_reader(tree.root)
    clean = reader.check()
    assert clean.ok and clean.item_name == "expressions" and clean.format == "refavs"
    for split, expected in tree.counts.items():
        assert vars(clean.splits[split]) == expected, split

    record = by_uid(reader, "train", f"{VID_A}_piano_1")
    missing_mask = record.mask_refs[4]
    missing_mask.unlink()
    corrupt = tree.root / "media" / VID_B / "frames" / "2.jpg"
    corrupt.write_bytes(b"this is not a jpeg")
    report = quiet_reader(tree.root).check()
    assert not report.ok
    assert report.missing == [(missing_mask, "mask")]
    assert [p for p, _ in report.unreadable] == [corrupt]
    for split, expected in tree.counts.items():
        assert vars(report.splits[split]) == expected, split
    with pytest.raises(MissingFileError, match=r"00004\.png"):
        reader.load(record)


@pytest.mark.parametrize(
    ("header", "row", "expected"),
    [
        ("vid,uid,split,exp", "v_1_2,v_1_2_cat_1,train,a cat", r"missing column\(s\) \['fid'\]"),
        ("vid,uid,split,fid,exp", "v_1_2,v_1_2_cat_1,train,one,a cat", r"row 3: fid 'one' is not an integer"),
        ("vid,uid,split,fid,exp", ",v_1_2_cat_1,train,0,a cat", r"row 3: empty vid"),
        ("vid,uid,split,fid,exp", "v_1_2,cat,train,0,a cat", r"row 3: uid 'cat' is not of the form"),
        ("vid,uid,split,fid,exp", "v_1_2,v_1_2_cat_1,train,0", r"row 3 \(line 4\): expected 5 fields"),
    ],
)
def test_malformed_csv_names_file_and_row(tmp_path: Path, header: str, row: str, expected: str) -> None:
    root = tmp_path / "bad"
    root.mkdir()
    good = "v_1_2,v_1_2_dog_1,train,0,a dog\nv_1_2,v_1_2_dog_2,val,0,another dog\n"
    (root / "metadata.csv").write_text(f"{header}\n{good}{row}\n", encoding="utf-8")
    with pytest.raises(MetadataError, match=expected) as err:
        RefAVSReader(root).splits()
    assert err.value.path == root / "metadata.csv"
    assert str(root / "metadata.csv") in str(err.value)


def test_missing_metadata_and_root(tmp_path: Path) -> None:
    with pytest.raises(MissingFileError, match="root folder"):
        RefAVSReader(tmp_path / "nowhere")
    with pytest.raises(MissingFileError, match=r"metadata\.csv"):
        RefAVSReader(tmp_path).splits()


def test_unknown_split_lists_known(tree: RefAVSFixture) -> None:
    reader = quiet_reader(tree.root)
    with pytest.raises(ValueError, match=r"unknown split 'TODO'.*'test_s'"):
        reader.index("TODO")
    with pytest.raises(ValueError, match="test_u"):
        reader.index("test_u")


def test_folder_vid_mismatch_is_counted(tmp_path: Path) -> None:
    root = tmp_path / "mismatch"
    root.mkdir()
    (root / "metadata.csv").write_text(
        "vid,uid,split,fid,exp\nvidX_0_1,vidY_0_1_cat_1,train,0,a cat\nvidX_0_1,vidX_0_1_cat_2,train,0,b\n"
        "vidX_0_1,vidZ_0_1_dog_1,val,0,c\n",
        encoding="utf-8",
    )
    reader = RefAVSReader(root)
    with pytest.warns(DatasetWarning, match=r"2 row\(s\) have a uid whose folder") as caught:
        records = reader.index("train")
    assert len(caught) == 1
    assert records[0].extra["media_dir"] == "vidY_0_1" and records[0].video_id == "vidX_0_1"
    assert records[0].frame_paths[0].parent.parent.name == "vidY_0_1"


def test_dataset_wrapper_decodes(tree: RefAVSFixture) -> None:
    reader = quiet_reader(tree.root, image_size=8)
    dataset = reader.dataset("test_n")
    assert len(dataset) == 2
    assert all(s.is_null for s in dataset)


def test_short_audio_repeats_last_example(tree: RefAVSFixture) -> None:
    from avseg.errors import AudioPaddedWarning
    from tests.data.fixtures_refavs import write_wav

    write_wav(tree.root / "media" / VID_C / "audio.wav", 4.0)  # 4 VGGish examples instead of 10
    reader = quiet_reader(tree.root)
    with pytest.warns(AudioPaddedWarning):
        sample = reader.load(by_uid(reader, "val", f"{VID_C}_cat_1"))
    examples = sample.audio_examples
    assert examples.shape == (10, 1, 96, 64) and examples[3].abs().sum() > 0
    for i in range(4, 10):  # AVSBench/Ref-AVS style padding: the last real example is repeated
        torch.testing.assert_close(examples[i], examples[3])
    assert sample.audio_wave.shape == (160_000,)
