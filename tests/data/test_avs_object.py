"""AVSBench-object v1 reader (S4 and MS3): layout quirks, sample contents, subset choice, CSV errors, check()."""

import shutil
import warnings

import numpy as np
import pytest
import torch

from avseg.data.avs_object import AVSObjectReader
from avseg.data.readers import get_reader
from avseg.errors import AudioPaddedWarning, DatasetWarning, MetadataError, MissingFileError
from tests.data.fixtures_avs_object import (
    MS3_ROWS,
    S4_ROWS,
    S4_SHORT_AUDIO,
    SIZE,
    expected_mask,
    ms3_clip_index,
    s4_clip_index,
    write_ms3_tree,
    write_s4_tree,
)


@pytest.fixture
def s4(tmp_path):
    return write_s4_tree(tmp_path)


@pytest.fixture
def ms3(tmp_path):
    return write_ms3_tree(tmp_path)


# ------------------------------------------------------------------------------------------------------------- S4


def test_s4_index_counts_and_paths(s4):
    reader = AVSObjectReader(s4.root)
    assert reader.subset == "s4"
    assert reader.splits() == ["train", "val", "test"]
    assert [len(reader.index(s)) for s in reader.splits()] == [2, 1, 1]
    rec = reader.index("train")[0]
    data = s4.root / "Single-source" / "s4_data"
    assert rec.video_id == "s4clipA" and rec.num_frames == 5 and rec.uid is None
    assert rec.frame_paths[2] == data / "visual_frames/train/dog_barking/s4clipA/s4clipA_3.png"
    assert rec.audio_path == data / "audio_wav/train/dog_barking/s4clipA.wav"
    # Train: only the first mask exists and is referenced.
    assert rec.mask_refs[0] == data / "gt_masks/train/dog_barking/s4clipA/s4clipA_1.png"
    assert rec.mask_refs[1:] == (None,) * 4
    assert rec.labelled == (True, False, False, False, False)
    val = reader.index("val")[0]
    assert all(m is not None for m in val.mask_refs) and val.labelled == (True,) * 5
    assert val.extra["category"] == "dog_barking"


def test_s4_train_sample(s4):
    reader = AVSObjectReader(s4.root)
    rec = reader.index("train")[0]
    sample = reader.load(rec)
    h, w = SIZE
    assert sample.frames.shape == (5, 3, h, w) and sample.frames.dtype == torch.uint8
    for k in range(1, 6):
        np.testing.assert_array_equal(sample.frames[k - 1].permute(1, 2, 0).numpy(), s4.frames[("s4clipA", k)])
    assert sample.label_valid.tolist() == [True, False, False, False, False]
    assert sample.frame_valid.all()
    np.testing.assert_array_equal(sample.masks[0].numpy(), expected_mask(0, 1))
    assert sample.masks[1:].eq(0).all()  # unlabelled frames hold zeros
    assert set(np.unique(sample.masks.numpy())) <= {0, 1}
    assert sample.audio_examples.shape == (5, 1, 96, 64) and sample.audio_wave.shape == (5 * 16000,)
    assert sample.has_audio
    assert sample.meta == {"subset": "s4", "category": "dog_barking"}
    assert sample.frame_names == tuple(f"s4clipA_{k}" for k in range(1, 6))
    assert sample.orig_size == SIZE and sample.text is None and sample.dataset == "avs-object"


def test_s4_test_sample_has_five_masks(s4):
    reader = AVSObjectReader(s4.root)
    sample = reader.load(reader.index("test")[0])
    i = s4_clip_index("s4clipD")
    assert sample.label_valid.all()
    for k in range(1, 6):
        np.testing.assert_array_equal(sample.masks[k - 1].numpy(), expected_mask(i, k))
    assert sample.meta["category"] == "playing_piano"


def test_short_audio_repeats_last_example(s4):
    reader = AVSObjectReader(s4.root)
    rec = next(r for r in reader.index("train") if r.video_id == S4_SHORT_AUDIO)
    with pytest.warns(AudioPaddedWarning):
        sample = reader.load(rec)
    ex = sample.audio_examples
    # 3.5 s give three complete 0.96 s examples; AVSBench repeats the third for frames 4 and 5.
    assert torch.equal(ex[3], ex[2]) and torch.equal(ex[4], ex[2])
    assert not torch.equal(ex[1], ex[2])  # the fixture changes tone every second
    # The waveform is padded with silence to 5 s.
    n = int(3.5 * 16000)
    np.testing.assert_allclose(sample.audio_wave[:n].numpy(), s4.waves[S4_SHORT_AUDIO], atol=1e-6)
    assert sample.audio_wave[n:].eq(0).all()


def test_full_length_audio_has_distinct_examples(s4):
    reader = AVSObjectReader(s4.root)
    with warnings.catch_warnings():
        warnings.simplefilter("error", AudioPaddedWarning)
        sample = reader.load(reader.index("val")[0])
    ex = sample.audio_examples
    assert not torch.equal(ex[3], ex[4])


def test_image_size_resizes_frames_bilinear_and_masks_nearest(s4):
    reader = AVSObjectReader(s4.root, image_size=(12, 16))
    sample = reader.load(reader.index("val")[0])
    assert sample.frames.shape == (5, 3, 12, 16) and sample.masks.shape == (5, 12, 16)
    assert sample.orig_size == SIZE
    # Nearest (pixel-centre) at exactly half size keeps pixels 1, 3, 5, ... of the stored mask; values stay 0/1.
    np.testing.assert_array_equal(sample.masks[0].numpy(), expected_mask(s4_clip_index("s4clipC"), 1)[1::2, 1::2])


def test_root_may_be_the_subset_folder(s4):
    reader = AVSObjectReader(s4.root / "Single-source")
    assert reader.subset == "s4" and len(reader.index("train")) == 2


# ------------------------------------------------------------------------------------------------------------ MS3


def test_ms3_mp4_infix_frames_and_palette_masks(ms3):
    reader = AVSObjectReader(ms3.root)
    assert reader.subset == "ms3"
    assert reader.splits() == ["train", "val", "test"]
    rec = reader.index("train")[0]
    data = ms3.root / "Multi-sources" / "ms3_data"
    assert rec.frame_paths[0] == data / "visual_frames/ms3clipA/ms3clipA.mp4_1.png"
    assert rec.mask_refs[4] == data / "gt_masks/train/ms3clipA/ms3clipA_5.png"
    assert rec.audio_path == data / "audio_wav/train/ms3clipA.wav"
    assert rec.labelled == (True,) * 5  # MS3 trains on all five masks
    sample = reader.load(rec)
    i = ms3_clip_index("ms3clipA")
    for k in range(1, 6):
        # Palette index 255 (white) is foreground: the official loader's ToTensor makes it 1.
        np.testing.assert_array_equal(sample.masks[k - 1].numpy(), expected_mask(i, k))
        np.testing.assert_array_equal(sample.frames[k - 1].permute(1, 2, 0).numpy(), ms3.frames[("ms3clipA", k)])
    assert sample.label_valid.all() and sample.meta == {"subset": "ms3"}
    assert sample.frame_names[0] == "ms3clipA_1"


def test_both_subsets_need_a_choice(tmp_path):
    root = write_s4_tree(tmp_path, with_ms3=True).root
    with pytest.raises(ValueError, match=r"subset='s4' or subset='ms3'"):
        AVSObjectReader(root)
    assert AVSObjectReader(root, subset="ms3").splits() == ["train", "val", "test"]
    assert len(AVSObjectReader(root, subset="s4").index("train")) == 2
    reader = get_reader("avs-object", root, subset="ms3", image_size=None)
    assert [r.video_id for r in reader.index("val")] == [n for n, s in MS3_ROWS if s == "val"]


def test_missing_subset_is_named(s4, tmp_path):
    with pytest.raises(MissingFileError, match=r"Multi-sources"):
        AVSObjectReader(s4.root, subset="ms3")
    with pytest.raises(MissingFileError, match=r"Single-source"):
        AVSObjectReader(tmp_path / "avsbench_data" / "Single-source" / "s4_data" / "gt_masks")
    with pytest.raises(ValueError, match=r"'s4', 'ms3' or None"):
        AVSObjectReader(s4.root, subset="s5")  # type: ignore[arg-type]


def test_unknown_split(s4):
    with pytest.raises(ValueError, match=r"unknown split 'valid'.*'train', 'val', 'test'"):
        AVSObjectReader(s4.root).index("valid")


# ------------------------------------------------------------------------------------------------------ CSV rules


def _write_csv(tree, text):
    path = tree.root / "Single-source" / "s4_meta_data.csv"
    path.write_text(text)
    return path


def test_csv_without_split_column(s4):
    path = _write_csv(s4, "name,start_time,category,part\ns4clipA,0,dog_barking,train\n")
    with pytest.raises(MetadataError, match=r"row 1: header .* no 'split' column") as err:
        AVSObjectReader(s4.root).splits()
    assert err.value.path == path


def test_csv_short_row_names_the_row(s4):
    _write_csv(s4, "name,start_time,category,split\ns4clipA,0,dog_barking,train\n\ns4clipB,1\n")
    with pytest.raises(MetadataError, match=r"s4_meta_data.csv: row 4: 2 field\(s\)"):
        AVSObjectReader(s4.root).index("train")


def test_csv_empty_name_and_empty_file(s4):
    _write_csv(s4, "name,start_time,category,split\n,0,dog_barking,train\n")
    with pytest.raises(MetadataError, match=r"row 2: empty clip name"):
        AVSObjectReader(s4.root).splits()
    _write_csv(s4, "\n\n")
    with pytest.raises(MetadataError, match=r"empty file"):
        AVSObjectReader(s4.root).splits()


def test_csv_columns_by_header_or_position(s4):
    # Reordered columns with a 'name' header: columns are found by name.
    _write_csv(s4, "split,category,name,start\ntrain,dog_barking,s4clipA,0\n")
    rec = AVSObjectReader(s4.root).index("train")[0]
    assert rec.video_id == "s4clipA" and rec.extra["category"] == "dog_barking"
    # Unnamed first and third columns (only 'split' named): name = column 1, category = column 3 (official positions).
    _write_csv(s4, "vid,t0,cat,split\ns4clipA,0,dog_barking,train\n")
    rec = AVSObjectReader(s4.root).index("train")[0]
    assert rec.video_id == "s4clipA" and rec.extra["category"] == "dog_barking"


def test_csv_duplicate_rows_dropped_with_warning(s4):
    rows = "\n".join(f"{n},{t},{c},{s}" for n, t, c, s in S4_ROWS)
    _write_csv(s4, f"name,start_time,category,split\n{rows}\ns4clipA,0,dog_barking,train\ns4clipC,0,x,val\n")
    reader = AVSObjectReader(s4.root)
    with pytest.warns(DatasetWarning, match=r"dropped 2 row"):
        assert len(reader.index("train")) == 2
    assert len(reader.index("val")) == 1


def test_missing_csv(s4):
    (s4.root / "Single-source" / "s4_meta_data.csv").unlink()
    with pytest.raises(MissingFileError, match=r"s4_meta_data.csv: .*metadata CSV not found"):
        AVSObjectReader(s4.root).splits()


# ---------------------------------------------------------------------------------------------------------- check


def test_check_clean_tree(s4):
    report = AVSObjectReader(s4.root).check()
    assert report.ok, (report.missing, report.unreadable)
    assert report.item_name == "clips"
    assert {s: (c.videos, c.items, c.labelled_frames) for s, c in report.splits.items()} == {
        "train": (2, 2, 2),
        "val": (1, 1, 5),
        "test": (1, 1, 5),
    }
    assert any("label only their first frame" in n for n in report.notes)


def test_check_and_load_name_missing_and_corrupt_files(ms3):
    data = ms3.root / "Multi-sources" / "ms3_data"
    missing_mask = data / "gt_masks/val/ms3clipB/ms3clipB_3.png"
    missing_mask.unlink()
    missing_audio = data / "audio_wav/test/ms3clipC.wav"
    missing_audio.unlink()
    shutil.rmtree(data / "visual_frames/ms3clipA")
    corrupt = data / "gt_masks/test/ms3clipC/ms3clipC_2.png"
    corrupt.write_bytes(b"\x89PNG\r\n\x1a\n not really")
    reader = AVSObjectReader(ms3.root)
    report = reader.check()
    assert not report.ok
    missing = {p for p, _ in report.missing}
    assert missing_mask in missing and missing_audio in missing
    assert {data / f"visual_frames/ms3clipA/ms3clipA.mp4_{k}.png" for k in range(1, 6)} <= missing
    assert [p for p, _ in report.unreadable] == [corrupt]
    assert report.splits["val"].labelled_frames == 5  # counts come from the index, not from the files
    with pytest.raises(MissingFileError, match=r"ms3clipB_3.png"):
        reader.load(reader.index("val")[0])
    with pytest.raises(MissingFileError, match=r"ms3clipA.mp4_1.png"):
        reader.load(reader.index("train")[0])
