"""Ground truth at the stored resolution (``native_masks``), read by each benchmark's official rule, for every reader.

Each fixture tree stores its masks at 48x80 while the frames are read at ``image_size=32``, so ``native_masks`` and
``masks`` differ in size and shape. Every expectation is an independent reading written here from the official
loaders: PIL ``convert('1')`` (AVSBench S4), ``convert('P')`` then ``ToTensor``'s division by 255 (MS3), exact colour
match against the bit-shift palette (AVSS), cv2's grey conversion of the colour image then ``> 0`` (Ref-AVS), and the
masks the RVOS fixture encoded.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from avseg.data.readers import get_reader
from avseg.data.types import collate
from avseg.errors import DatasetWarning, UsageError
from tests.data.fixtures_avs_object import write_ms3_tree, write_s4_tree
from tests.data.fixtures_avss import write_avss_tree
from tests.data.fixtures_refavs import VID_A, VID_B, write_refavs_tree
from tests.data.fixtures_rvos import SIZE as RVOS_FRAME_SIZE
from tests.data.fixtures_rvos import union, write_rvos_tree

MASK_SIZE = (48, 80)
IMAGE_SIZE = 32


def quiet(reader):
    """Index every split once, swallowing the fixtures' expected metadata warnings."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DatasetWarning)
        for split in reader.splits():
            reader.index(split)
    return reader


def record(reader, video_id: str, uid: str | None = None):
    return next(
        r for s in reader.splits() for r in reader.index(s) if r.video_id == video_id and (uid is None or r.uid == uid)
    )


# ---------------------------------------------------------------------- official readings, written independently


def official_s4(path: Path) -> np.ndarray:
    """``S4Dataset``: ``Image.open(path).convert('1')``; ``ToTensor`` makes a mode-'1' image 0/1."""
    return np.array(Image.open(path).convert("1")).astype(np.uint8)


def official_ms3_target(path: Path) -> np.ndarray:
    """``MS3Dataset``: ``Image.open(path).convert('P')``; ``ToTensor`` divides a 'P' image's indices by 255."""
    return np.array(Image.open(path).convert("P")).astype(np.float64) / 255.0


def official_avss(path: Path) -> np.ndarray:
    """``color_dataloader.py``: palette by bit shifting, RGB colour image, argmax over exact colour matches."""
    palette = np.zeros((71, 3), dtype=np.int64)
    for j in range(71):
        for bit in range(7):  # index bit b goes to channel b % 3 at bit 7 - b // 3
            if (j >> bit) & 1:
                palette[j, bit % 3] += 1 << (7 - bit // 3)
    rgb = np.array(Image.open(path).convert("RGB")).astype(np.int64)
    matches = np.stack([(rgb == colour).all(-1) for colour in palette], axis=-1)
    return matches.argmax(-1).astype(np.uint8)


def official_refavs_gray(path: Path) -> np.ndarray:
    """``REFAVS.__getitem__``: the colour image's luma (``0.299 R + 0.587 G + 0.114 B``, rounded), foreground > 0."""
    rgb = np.array(Image.open(path).convert("RGB")).astype(np.float64)
    return np.floor(rgb @ np.array([0.299, 0.587, 0.114]) + 0.5).astype(np.int64)


# ---------------------------------------------------------------------- AVSBench-object


def test_s4_native_masks_at_stored_size(tmp_path: Path) -> None:
    root = write_s4_tree(tmp_path, mask_size=MASK_SIZE).root
    reader = quiet(get_reader("avs-object", root, image_size=IMAGE_SIZE, native_masks=True))
    for name, labelled in (("s4clipC", 5), ("s4clipA", 1)):  # val clip: 5 masks; train clip: only the first
        rec = record(reader, name)
        sample = reader.load(rec)
        assert sample.masks.shape == (5, IMAGE_SIZE, IMAGE_SIZE) and sample.frames.shape[-2:] == (32, 32)
        assert sample.native_masks is not None and sample.native_masks.shape == (5, *MASK_SIZE)
        assert sample.native_masks.dtype == torch.uint8
        for k in range(labelled):
            np.testing.assert_array_equal(sample.native_masks[k].numpy(), official_s4(rec.mask_refs[k]))
        assert int(sample.native_masks[labelled:].sum()) == 0


def _grey_mask(path: Path, size: tuple[int, int]) -> np.ndarray:
    """Overwrite ``path`` with an 'L' mask holding grey values 100 and 200 (anti-aliased or resized storage)."""
    grey = np.zeros(size, dtype=np.uint8)
    grey[2:10, 2:14] = 100
    grey[12:20, 4:20] = 200
    grey[3:6, 20:26] = 255
    Image.fromarray(grey).save(path)
    return grey


def test_s4_grey_values_follow_pil_mode_1(tmp_path: Path) -> None:
    tree = write_s4_tree(tmp_path)
    reader = quiet(get_reader("avs-object", tree.root))
    rec = record(reader, "s4clipC")
    grey = _grey_mask(rec.mask_refs[1], (24, 32))
    official = official_s4(rec.mask_refs[1])
    assert not np.array_equal(official, (grey > 0).astype(np.uint8))  # the two rules disagree on this mask
    with warnings.catch_warnings():
        warnings.simplefilter("error", DatasetWarning)  # 255 is present: PIL's reading is the intended one
        sample = reader.load(rec)
    np.testing.assert_array_equal(sample.masks[1].numpy(), official)
    native = quiet(get_reader("avs-object", tree.root, native_masks=True)).load(rec).native_masks
    np.testing.assert_array_equal(native[1].numpy(), official)


def test_s4_mask_without_full_brightness_warns(tmp_path: Path) -> None:
    tree = write_s4_tree(tmp_path)
    reader = quiet(get_reader("avs-object", tree.root))
    rec = record(reader, "s4clipD")
    for path in rec.mask_refs:
        Image.fromarray((np.array(Image.open(path)) > 0).astype(np.uint8)).save(path)  # 0/1 storage
    with pytest.warns(DatasetWarning, match="brightest pixel is below 255") as caught:
        sample = reader.load(rec)
    messages = [str(w.message) for w in caught if issubclass(w.category, DatasetWarning)]
    assert len(messages) == 1 and str(rec.mask_refs[0]) in messages[0]
    np.testing.assert_array_equal(sample.masks.numpy(), np.stack([official_s4(p) for p in rec.mask_refs]))


def test_ms3_native_masks_are_the_official_binary_targets(tmp_path: Path) -> None:
    root = write_ms3_tree(tmp_path, mask_size=MASK_SIZE).root
    reader = quiet(get_reader("avs-object", root, image_size=IMAGE_SIZE, native_masks=True))
    rec = record(reader, "ms3clipB")
    with warnings.catch_warnings():
        warnings.simplefilter("error", DatasetWarning)
        sample = reader.load(rec)
    assert sample.masks.shape == (5, IMAGE_SIZE, IMAGE_SIZE) and sample.native_masks.shape == (5, *MASK_SIZE)
    for k, path in enumerate(rec.mask_refs):
        target = official_ms3_target(path)
        assert set(np.unique(target)) <= {0.0, 1.0}
        np.testing.assert_array_equal(sample.native_masks[k].numpy(), target.astype(np.uint8))


def test_ms3_fractional_official_targets_warn_once(tmp_path: Path) -> None:
    root = write_ms3_tree(tmp_path, ms3_storage="objects").root
    reader = quiet(get_reader("avs-object", root, native_masks=True))
    first, second = record(reader, "ms3clipA"), record(reader, "ms3clipC")
    assert np.unique(official_ms3_target(first.mask_refs[0])).tolist()[1:] == [1 / 255, 2 / 255, 3 / 255]
    with pytest.warns(DatasetWarning, match="fractional targets") as caught:
        sample = reader.load(first)
        reader.load(second)
    messages = [str(w.message) for w in caught if issubclass(w.category, DatasetWarning)]
    assert len(messages) == 1 and str(first.mask_refs[0]) in messages[0]
    for k, path in enumerate(first.mask_refs):
        np.testing.assert_array_equal(sample.native_masks[k].numpy(), (official_ms3_target(path) > 0).astype(np.uint8))


# ---------------------------------------------------------------------- AVSBench-semantic


def test_avss_native_labels_at_stored_size(tmp_path: Path) -> None:
    root = write_avss_tree(tmp_path / "avss", mask_size=MASK_SIZE).root
    reader = quiet(get_reader("avss", root, image_size=IMAGE_SIZE, native_masks=True))
    for uid, labelled in (("v2_clipA", 10), ("s4_clipA", 1), ("ms3_clipB", 5)):
        rec = record(reader, uid)
        sample = reader.load(rec)
        assert sample.masks.shape == (10, IMAGE_SIZE, IMAGE_SIZE) and sample.native_masks.shape == (10, *MASK_SIZE)
        for i in range(labelled):
            np.testing.assert_array_equal(sample.native_masks[i].numpy(), official_avss(rec.mask_refs[i]))
        assert int(sample.native_masks[labelled:].sum()) == 0  # unlabelled and padded frames
        assert sample.native_masks[0].any()


def test_mask_of_another_size_within_a_clip_is_resized_with_warning(tmp_path: Path) -> None:
    root = write_avss_tree(tmp_path / "avss").root
    reader = quiet(get_reader("avss", root, native_masks=True))
    rec = record(reader, "v2_clipC")  # 26x36 masks
    odd = rec.mask_refs[4]
    Image.open(odd).resize((72, 52), Image.NEAREST).save(odd)
    with pytest.warns(DatasetWarning, match=r"mask size \(52, 72\) differs from \(26, 36\)") as caught:
        sample = reader.load(rec)
    messages = [str(w.message) for w in caught if issubclass(w.category, DatasetWarning)]
    assert len(messages) == 1 and str(odd) in messages[0]
    assert sample.native_masks.shape == (10, 26, 36)
    np.testing.assert_array_equal(sample.native_masks[4].numpy(), official_avss(odd)[1::2, 1::2])


# ---------------------------------------------------------------------- Ref-AVS


def test_refavs_native_masks_and_levels(tmp_path: Path) -> None:
    root = write_refavs_tree(tmp_path / "refavs", mask_size=MASK_SIZE).root
    reader = quiet(get_reader("refavs", root, image_size=IMAGE_SIZE, native_masks=True))
    for vid, uid, level in (
        (VID_A, f"{VID_A}_piano_1", 255),
        (VID_A, f"{VID_A}_guitar_2", 1),
        (VID_B, f"{VID_B}_dog_2", 128),
    ):
        rec = record(reader, vid, uid)
        sample = reader.load(rec)
        assert sample.masks.shape == (10, IMAGE_SIZE, IMAGE_SIZE) and sample.native_masks.shape == (10, *MASK_SIZE)
        greys = [official_refavs_gray(p) for p in rec.mask_refs]
        # The grey levels themselves: the official 256x256 target depends on them (cv2 rounds after resizing).
        np.testing.assert_array_equal(sample.native_masks.numpy(), np.stack(greys))
        assert {int(g.max()) for g in greys} == {level}


def test_refavs_colour_mask_uses_cv2_grey(tmp_path: Path) -> None:
    tree = write_refavs_tree(tmp_path / "refavs")
    reader = quiet(get_reader("refavs", tree.root, native_masks=True))
    rec = record(reader, VID_A, f"{VID_A}_piano_1")
    path = rec.mask_refs[3]
    rgb = np.zeros((24, 32, 3), dtype=np.uint8)
    # Dark colours around the grey threshold: blue 4 and red 1 have luma below 0.5, the others above.
    for column, colour in enumerate([(0, 0, 4), (0, 0, 5), (1, 0, 0), (2, 0, 0), (0, 1, 0), (200, 10, 30)]):
        rgb[4:10, 4 * column : 4 * column + 3] = colour
    Image.fromarray(rgb).save(path)
    sample = reader.load(rec)
    expected = official_refavs_gray(path)
    np.testing.assert_array_equal(sample.native_masks[3].numpy(), expected)
    assert expected[5, [0, 4, 8, 12, 16, 20]].tolist() == [0, 1, 0, 1, 1, 69]  # cv2.cvtColor gives the same
    np.testing.assert_array_equal(sample.masks[3].numpy(), (expected > 0).astype(np.uint8))


# ---------------------------------------------------------------------- RVOS


def test_rvos_native_masks_at_rle_size(tmp_path: Path) -> None:
    tree = write_rvos_tree(tmp_path, mask_size=MASK_SIZE)
    reader = quiet(get_reader("rvos", tree.root, image_size=IMAGE_SIZE, native_masks=True))
    rec = next(r for r in reader.index("train") if r.uid == "vidA/0")
    sample = reader.load(rec)
    assert sample.masks.shape == (3, IMAGE_SIZE, IMAGE_SIZE) and sample.native_masks.shape == (3, *MASK_SIZE)
    np.testing.assert_array_equal(sample.native_masks.numpy(), union(tree, "train", ["0", "1"], [0, 1, 2]))
    absent = reader.load(next(r for r in reader.index("train") if r.uid == "vidA/1"))
    np.testing.assert_array_equal(absent.native_masks.numpy(), union(tree, "train", ["2"], [0, 1, 2]))
    unlabelled = reader.load(reader.index("valid")[0])  # no mask_dict.json: zeros at the frames' size
    assert unlabelled.native_masks.shape == (2, *RVOS_FRAME_SIZE) and int(unlabelled.native_masks.sum()) == 0


# ---------------------------------------------------------------------- the option itself


def test_native_masks_off_by_default_and_validated(tmp_path: Path) -> None:
    root = write_refavs_tree(tmp_path / "refavs").root
    reader = quiet(get_reader("refavs", root))
    sample = reader.load(record(reader, VID_A, f"{VID_A}_piano_1"))
    assert sample.native_masks is None
    with pytest.raises(UsageError, match="native_masks must be True or False, got 'yes'"):
        get_reader("refavs", root, native_masks="yes")


def test_native_masks_collate_with_different_sizes(tmp_path: Path) -> None:
    root = write_refavs_tree(tmp_path / "refavs").root
    reader = quiet(get_reader("refavs", root, image_size=IMAGE_SIZE, native_masks=True))
    a = reader.load(record(reader, VID_A, f"{VID_A}_piano_1"))  # 24x32 on disk
    b = reader.load(record(reader, VID_B, f"{VID_B}_dog_2"))  # 30x40 on disk
    batch = collate([a, b])
    assert batch.masks.shape == (2, 10, IMAGE_SIZE, IMAGE_SIZE)
    assert [tuple(m.shape) for m in batch.native_masks] == [(10, 24, 32), (10, 30, 40)]
    assert torch.equal(batch.native_masks[1], b.native_masks)
