"""AVSBench-semantic reader: palette, colour decoding, padding flags, subsets, checking and metadata errors."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from avseg.data.avss import (
    AVSSReader,
    avss_palette,
    color_mask_to_label,
    label_to_color,
    read_color_mask,
)
from avseg.data.types import collate
from avseg.errors import DatasetWarning, MetadataError, MissingFileError, ShapeError
from tests.data.fixtures_avss import CLIPS, COLOURS, OFF_PALETTE, AVSSFixture, expected_labels, write_avss_tree


@pytest.fixture
def tree(tmp_path: Path) -> AVSSFixture:
    return write_avss_tree(tmp_path / "avss")


def quiet_reader(root: Path, **kwargs) -> AVSSReader:
    reader = AVSSReader(root, **kwargs)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DatasetWarning)
        reader.splits()
    return reader


def record_of(reader: AVSSReader, uid: str):
    return next(r for s in reader.splits() for r in reader.index(s) if r.video_id == uid)


def reference_palette(n: int) -> np.ndarray:
    """Independent reference: the k-th lowest bit of an index goes to channel k % 3 at bit 7 - k // 3."""
    out = np.zeros((n, 3), dtype=np.uint8)
    for j in range(n):
        for k, bit in enumerate(reversed(format(j, "b"))):
            if bit == "1":
                out[j, k % 3] += 2 ** (7 - k // 3)
    return out


# ---------------------------------------------------------------------- palette and colour decoding


def test_palette_values() -> None:
    palette = avss_palette()
    assert palette.shape == (71, 3) and palette.dtype == np.uint8
    for index, colour in COLOURS.items():  # worked out by hand
        assert tuple(palette[index]) == colour, index
    np.testing.assert_array_equal(palette, reference_palette(71))
    assert len({tuple(c) for c in palette}) == 71  # exact matching needs distinct colours
    np.testing.assert_array_equal(avss_palette(5), palette[:5])
    with pytest.raises(ValueError, match="num_classes"):
        avss_palette(0)


def test_color_mask_round_trip_and_unknown_colours() -> None:
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 71, size=(9, 11)).astype(np.uint8)
    rgb = label_to_color(labels)
    assert rgb.shape == (9, 11, 3) and rgb.dtype == np.uint8
    assert tuple(rgb[0, 0]) == tuple(reference_palette(71)[labels[0, 0]])
    np.testing.assert_array_equal(color_mask_to_label(rgb), labels)
    rgb[4, 5] = (1, 2, 3)
    rgb[0, 0] = (255, 255, 255)
    decoded = color_mask_to_label(rgb)
    assert decoded[4, 5] == 0 and decoded[0, 0] == 0  # AVSBench's argmax over no match is background
    assert decoded.dtype == np.uint8
    with pytest.raises(ValueError, match="label 71"):
        label_to_color(np.array([[0, 71]]))
    with pytest.raises(ValueError, match="label -1"):
        label_to_color(np.array([-1]))
    with pytest.raises(ShapeError, match=r"\(H, W, 3\)"):
        color_mask_to_label(np.zeros((4, 4), dtype=np.uint8))


def test_read_color_mask_counts_unknown_pixels(tmp_path: Path) -> None:
    rgb = np.zeros((6, 7, 3), dtype=np.uint8)
    rgb[1:3, 1:3] = COLOURS[9]
    rgb[5, 0:3] = (10, 200, 30)
    path = tmp_path / "m.png"
    Image.fromarray(rgb).save(path)
    with pytest.warns(DatasetWarning, match=r"3 pixel\(s\) have colours outside") as caught:
        labels = read_color_mask(path)
    assert len(caught) == 1 and str(path) in str(caught[0].message) and "(10, 200, 30)" in str(caught[0].message)
    expected = np.zeros((6, 7), dtype=np.uint8)
    expected[1:3, 1:3] = 9
    np.testing.assert_array_equal(labels, expected)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        Image.fromarray(label_to_color(expected)).save(path)
        np.testing.assert_array_equal(read_color_mask(path), expected)  # no warning for a clean mask


# ---------------------------------------------------------------------- index


def test_splits_counts_and_duplicate_warning(tree: AVSSFixture) -> None:
    reader = AVSSReader(tree.root)
    with pytest.warns(DatasetWarning, match=r"dropped 1 row\(s\).*\(train: 1\)") as caught:
        assert reader.splits() == ["train", "val", "test"]
    assert len([w for w in caught if issubclass(w.category, DatasetWarning)]) == 1
    report = reader.check()
    assert report.ok, (report.missing, report.unreadable)
    assert report.item_name == "clips" and report.format == "avss"
    for split, expected in tree.counts.items():
        assert vars(report.splits[split]) == expected, split


def test_records_follow_subset_rules(tree: AVSSFixture) -> None:
    reader = quiet_reader(tree.root)
    s4_train = record_of(reader, "s4_clipA")
    clip = tree.root / "v1s" / "s4_clipA"
    assert s4_train.frame_paths == tuple(clip / "frames" / f"{i}.jpg" for i in range(5))
    assert s4_train.mask_refs == (clip / "labels_rgb" / "0.png", None, None, None, None)
    assert s4_train.labelled == (True, False, False, False, False)
    assert s4_train.audio_path == clip / "audio.wav" and s4_train.num_frames == 10
    assert s4_train.extra["label"] == "v1s"
    assert record_of(reader, "s4_clipC").labelled == (True,) * 5  # v1s test: 5 masks
    assert record_of(reader, "ms3_clipA").labelled == (True,) * 5
    v2 = record_of(reader, "v2_clipA")
    assert len(v2.frame_paths) == 10 and v2.mask_refs[9] == tree.root / "v2" / "v2_clipA" / "labels_rgb" / "9.png"


def test_subsets_filter_and_validation(tree: AVSSFixture) -> None:
    only_s4 = quiet_reader(tree.root, subsets=("v1s",))
    assert only_s4.splits() == ["train", "test"]
    assert [r.video_id for r in only_s4.index("train")] == ["s4_clipA", "s4_clipB"]
    ms3 = quiet_reader(tree.root, subsets=["v1m"], num_frames=5)
    sample = ms3.load(ms3.index("val")[0])
    assert sample.frames.shape[0] == 5 and sample.frame_valid.all() and sample.label_valid.all()
    with pytest.raises(ValueError, match=r"subsets.*'s4'"):
        AVSSReader(tree.root, subsets=("s4",))  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="num_frames=5"):
        AVSSReader(tree.root, num_frames=5)


# ---------------------------------------------------------------------- decoding


def test_load_v1s_train_pads_and_flags(tree: AVSSFixture) -> None:
    reader = quiet_reader(tree.root)
    sample = reader.load(record_of(reader, "s4_clipA"))
    h, w = 24, 32
    assert sample.frames.shape == (10, 3, h, w) and sample.frames.dtype == torch.uint8
    assert sample.masks.shape == (10, h, w) and sample.masks.dtype == torch.uint8
    assert sample.frame_valid.tolist() == [True] * 5 + [False] * 5
    assert sample.label_valid.tolist() == [True] + [False] * 9
    assert int(sample.frames[5:].abs().sum()) == 0 and sample.frames[4].any()
    np.testing.assert_array_equal(sample.masks[0].numpy(), expected_labels("s4_clipA", 0))
    assert int(sample.masks[1:].sum()) == 0
    rgb = np.asarray(Image.open(tree.root / "v1s" / "s4_clipA" / "frames" / "3.jpg").convert("RGB"))
    np.testing.assert_array_equal(sample.frames[3].permute(1, 2, 0).numpy(), rgb)
    assert sample.audio_examples.shape == (10, 1, 96, 64)
    assert int(sample.audio_examples[5:].abs().sum()) == 0 and sample.audio_examples[:5].abs().sum() > 0
    assert sample.audio_wave.shape == (80_000,) and sample.has_audio
    assert sample.meta["label"] == "v1s" and sample.video_id == "s4_clipA" and sample.text is None
    assert sample.frame_names == ("0", "1", "2", "3", "4") and sample.orig_size == (h, w)


def test_load_v1s_test_and_v1m_label_five_frames(tree: AVSSFixture) -> None:
    reader = quiet_reader(tree.root)
    for uid in ("s4_clipC", "ms3_clipB"):
        sample = reader.load(record_of(reader, uid))
        assert sample.frame_valid.tolist() == [True] * 5 + [False] * 5, uid
        assert sample.label_valid.tolist() == [True] * 5 + [False] * 5, uid
        for i in range(5):
            np.testing.assert_array_equal(sample.masks[i].numpy(), expected_labels(uid, i))
        assert int(sample.masks[5:].sum()) == 0


def test_load_v2_with_off_palette_pixel(tree: AVSSFixture) -> None:
    reader = quiet_reader(tree.root)
    record = record_of(reader, "v2_clipB")
    with pytest.warns(DatasetWarning, match=r"1 pixel\(s\)") as caught:
        sample = reader.load(record)
    off = [w for w in caught if issubclass(w.category, DatasetWarning)]
    assert len(off) == 1 and str(record.mask_refs[3]) in str(off[0].message)
    assert str(OFF_PALETTE) in str(off[0].message)
    assert sample.frame_valid.all() and sample.label_valid.all()
    for i in range(10):
        np.testing.assert_array_equal(sample.masks[i].numpy(), expected_labels("v2_clipB", i))
    assert sample.audio_wave.shape == (160_000,) and sample.audio_examples[9].abs().sum() > 0
    assert set(sample.masks.unique().tolist()) == {0, 1, 7}


def test_image_size_resizes_and_collates(tree: AVSSFixture) -> None:
    reader = quiet_reader(tree.root, image_size=(16, 18))
    a = reader.load(record_of(reader, "s4_clipB"))  # 20x28
    b = reader.load(record_of(reader, "v2_clipA"))  # 30x40
    assert a.orig_size == (20, 28) and b.orig_size == (30, 40)
    batch = collate([a, b])
    assert batch.frames.shape == (2, 10, 3, 16, 18) and batch.masks.shape == (2, 10, 16, 18)
    assert batch.frame_valid.sum(1).tolist() == [5, 10] and batch.label_valid.sum(1).tolist() == [1, 10]
    # Nearest resizing keeps class indices: only classes present in the clip appear.
    assert set(batch.masks[1].unique().tolist()) <= {0, 70, 6}
    assert set(batch.masks[0].unique().tolist()) <= {0, 2}


# ---------------------------------------------------------------------- checking and errors


def test_check_names_missing_and_corrupt_files(tree: AVSSFixture) -> None:
    reader = quiet_reader(tree.root)
    missing = tree.root / "v2" / "v2_clipA" / "labels_rgb" / "7.png"
    missing.unlink()
    corrupt = tree.root / "v1m" / "ms3_clipA" / "frames" / "1.jpg"
    corrupt.write_bytes(b"\xff\xd8 truncated")
    report = reader.check()
    assert not report.ok
    assert report.missing == [(missing, "mask")]
    assert [p for p, _ in report.unreadable] == [corrupt]
    for split, expected in tree.counts.items():
        assert vars(report.splits[split]) == expected, split
    with pytest.raises(MissingFileError, match=r"7\.png"):
        reader.load(record_of(reader, "v2_clipA"))
    deep = reader.check(deep=True)
    assert deep.missing == report.missing and [p for p, _ in deep.unreadable] == [corrupt]
    off = tree.root / "v2" / "v2_clipB" / "labels_rgb" / "3.png"
    assert deep.notes == [f"{off}: 1 pixel(s) have colours outside the AVSS palette (read as background)"]
    assert report.notes == []  # the quick check does not decode masks


def test_label2idx_class_names_and_check(tree: AVSSFixture) -> None:
    reader = quiet_reader(tree.root)
    path = tree.root / "label2idx.json"
    # The fixture numbers the classes from 1 ("background": 1), as the public copy of the file does; the official
    # loader only checks the entry count, and label = palette position = value - 1.
    assert json.loads(path.read_text())["background"] == 1
    names = reader.class_names()
    assert len(names) == 71 and names[0] == "background" and names[70] == "class_70"
    assert reader.check().ok
    path.write_text(json.dumps({n: i for i, n in enumerate(names)}), encoding="utf-8")  # numbered from 0
    assert reader.class_names() == names
    for bad in ({f"c{i}": i for i in range(70)}, {f"c{i}": i + 2 for i in range(71)}):
        path.write_text(json.dumps(bad), encoding="utf-8")
        with pytest.raises(MetadataError, match=r"71 distinct indices 0\.\.70 or 1\.\.71"):
            reader.class_names()
        assert [p for p, _ in reader.check().unreadable] == [path]
    path.unlink()
    report = reader.check()
    assert report.missing == [(path, "label2idx")]


@pytest.mark.parametrize(
    ("header", "row", "expected"),
    [
        ("uid,split", "c3,train", r"missing column\(s\) \['label'\]"),
        ("uid,label,split", "c3,v3,train", r"row 3: label 'v3' is not one of"),
        ("uid,label,split", ",v2,train", r"row 3: empty uid"),
        ("uid,label,split", "c3,v2,", r"row 3: empty split"),
        ("uid,label,split", "c3,v2", r"row 3 \(line 4\): expected 3 fields"),
    ],
)
def test_malformed_csv_names_file_and_row(tmp_path: Path, header: str, row: str, expected: str) -> None:
    root = tmp_path / "bad"
    root.mkdir()
    good = "c1,v1s,train\nc2,v2,val\n" if header.count(",") == 2 else "c1,train\nc2,val\n"
    (root / "metadata.csv").write_text(f"{header}\n{good}{row}\n", encoding="utf-8")
    with pytest.raises(MetadataError, match=expected) as err:
        AVSSReader(root).splits()
    assert err.value.path == root / "metadata.csv" and str(root / "metadata.csv") in str(err.value)


def test_unknown_split_lists_known(tree: AVSSFixture) -> None:
    reader = quiet_reader(tree.root)
    with pytest.raises(ValueError, match=r"unknown split 'valid'.*'val'"):
        reader.index("valid")


def test_fixture_covers_every_subset() -> None:
    assert {c[1] for c in CLIPS} == {"v1s", "v1m", "v2"}


def test_short_v2_audio_is_zero_padded(tree: AVSSFixture) -> None:
    from avseg.errors import AudioPaddedWarning
    from tests.data.fixtures_avss import write_wav

    write_wav(tree.root / "v2" / "v2_clipC" / "audio.wav", 4.0)  # 4 VGGish examples for a 10-frame clip
    reader = quiet_reader(tree.root)
    with pytest.warns(AudioPaddedWarning):
        sample = reader.load(record_of(reader, "v2_clipC"))
    assert sample.frame_valid.all() and sample.audio_examples[3].abs().sum() > 0
    assert int(sample.audio_examples[4:].abs().sum()) == 0  # AVSS pads with zero examples
