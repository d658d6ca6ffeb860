"""Empty and misnamed dataset trees: ``avseg data check`` fails with one line, readers say why a split is missing."""

import json
from pathlib import Path

import pytest

from avseg.cli import main
from avseg.data.avs_object import AVSObjectReader
from avseg.data.avss import AVSSReader
from avseg.data.base import EmptyDatasetError
from avseg.data.check import check
from avseg.data.refavs import RefAVSReader
from avseg.data.rvos import RVOSReader
from avseg.errors import MetadataError, MissingFileError, UsageError

REFAVS_HEADER = "vid,uid,split,fid,exp\n"


def refavs_root(tmp_path: Path, rows: str = "") -> Path:
    root = tmp_path / "refavs"
    root.mkdir()
    (root / "metadata.csv").write_text(REFAVS_HEADER + rows)
    return root


def run_check(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, list[str]]:
    status = main(["data", "check", *argv])
    out, err = capsys.readouterr()
    return status, out, err.strip().splitlines()


def test_header_only_metadata_fails_with_one_line(tmp_path, capsys):
    # Before, the check printed an empty table and "OK", and training then failed with "known: []".
    root = refavs_root(tmp_path)
    status, out, err = run_check([str(root), "--format", "refavs"], capsys)
    assert status == 1 and out == ""
    assert err == [
        f"avseg: error: {root}: empty refavs dataset: {root / 'metadata.csv'} yields no expressions "
        "(the file has a header but no rows)"
    ]


def test_header_only_metadata_in_json_mode(tmp_path, capsys):
    root = refavs_root(tmp_path)
    status, out, err = run_check([str(root), "--format", "refavs", "--json"], capsys)
    report = json.loads(out)
    assert status == 1 and report["ok"] is False and report["root"] == str(root)
    assert "the file has a header but no rows" in report["error"] and len(err) == 1


def test_only_todo_rows_is_empty(tmp_path, capsys):
    root = refavs_root(tmp_path, "v_1_2,v_1_2_dog_1,TODO,0,a dog\nv_1_2,v_1_2_dog_2,TODO,0,a cat\n")
    status, _, err = run_check([str(root), "--format", "refavs"], capsys)
    assert status == 1 and len(err) == 1
    assert err[0].endswith("(all 2 row(s) have split 'TODO', which is not part of any split)")


def test_reader_names_the_metadata_file_for_a_split_of_an_empty_tree(tmp_path):
    root = refavs_root(tmp_path)
    with pytest.raises(EmptyDatasetError) as err:
        RefAVSReader(root).index("train")
    assert str(err.value) == (
        f"split 'train' not in {root / 'metadata.csv'} (no splits found: the file has a header but no rows)"
    )
    assert err.value.root == root and err.value.path == root / "metadata.csv"
    assert isinstance(err.value, MetadataError)


def test_unknown_split_names_the_file_and_the_known_splits(tmp_path):
    root = refavs_root(tmp_path, "v_1_2,v_1_2_dog_1,train,0,a dog\n")
    with pytest.raises(UsageError) as err:
        RefAVSReader(root).index("val")
    assert str(err.value) == f"unknown split 'val' in {root / 'metadata.csv'}; known splits: ['train']"


def test_avss_header_only_and_no_row_in_the_subsets(tmp_path, capsys):
    root = tmp_path / "avss"
    root.mkdir()
    (root / "metadata.csv").write_text("uid,label,split\n")
    status, _, err = run_check([str(root), "--format", "avss"], capsys)
    assert status == 1
    assert err == [
        f"avseg: error: {root}: empty avss dataset: {root / 'metadata.csv'} yields no clips "
        "(the file has a header but no rows)"
    ]
    (root / "metadata.csv").write_text("uid,label,split\nclip1,v1s,train\n")
    with pytest.raises(EmptyDatasetError, match=r"none of its 1 row\(s\) has a label in the selected subsets \['v2'\]"):
        AVSSReader(root, subsets=("v2",)).index("train")


def test_avs_object_header_only(tmp_path, capsys):
    sub = tmp_path / "Single-source"
    sub.mkdir()
    (sub / "s4_meta_data.csv").write_text("name,start,category,split\n")
    status, _, err = run_check([str(tmp_path), "--format", "avs-object"], capsys)
    assert status == 1
    assert err == [
        f"avseg: error: {tmp_path}: empty avs-object dataset: {sub / 's4_meta_data.csv'} yields no clips "
        "(the file has a header but no rows)"
    ]


def test_rvos_without_split_folders_or_expressions(tmp_path, capsys):
    root = tmp_path / "rvos"
    root.mkdir()
    status, _, err = run_check([str(root), "--format", "rvos"], capsys)
    assert status == 1
    assert err == [
        f"avseg: error: {root}: empty rvos dataset: {root / '*' / 'meta_expressions.json'} yields no expressions "
        f"(no sub-folder of {root} holds a meta_expressions.json (one folder per split, e.g. train/))"
    ]
    with pytest.raises(MissingFileError, match="empty rvos dataset"):
        RVOSReader(root)  # still a MissingFileError for library callers
    (root / "train").mkdir()
    (root / "train" / "meta_expressions.json").write_text('{"videos": {}}')
    status, _, err = run_check([str(root), "--format", "rvos"], capsys)
    assert status == 1 and len(err) == 1
    assert str(root / "train" / "meta_expressions.json") in err[0]
    assert err[0].endswith("(their 'videos' objects list no expressions)")


def test_check_function_returns_1_for_an_empty_tree(tmp_path, capsys):
    root = refavs_root(tmp_path)
    assert check(root, format="refavs") == 1
    assert "OK" not in capsys.readouterr().out


def test_root_that_is_a_file_is_not_called_missing(tmp_path, capsys):
    file = tmp_path / "refavs.zip"
    file.write_bytes(b"PK")
    status, _, err = run_check([str(file), "--format", "refavs"], capsys)
    assert status == 2
    assert err == [f"avseg: error: {file}: is a file, not a refavs dataset folder"]


def test_metadata_that_is_a_folder_is_not_called_missing(tmp_path):
    (tmp_path / "metadata.csv").mkdir()
    with pytest.raises(MetadataError, match=r"metadata\.csv: is a folder, not a metadata CSV file"):
        RefAVSReader(tmp_path).splits()
    sub = tmp_path / "Single-source"
    (sub / "s4_data").mkdir(parents=True)
    (sub / "s4_meta_data.csv").mkdir()
    with pytest.raises(MetadataError, match=r"s4_meta_data\.csv: is a folder, not a metadata CSV file"):
        AVSObjectReader(tmp_path).splits()


def test_avs_object_root_without_subsets_is_a_plain_statement(tmp_path):
    with pytest.raises(MissingFileError) as err:
        AVSObjectReader(tmp_path)
    assert str(err.value) == (
        f"{tmp_path}: is not an AVSBench-object folder: it holds neither Single-source/ (S4) nor Multi-sources/ "
        "(MS3), nor s4_meta_data.csv or ms3_meta_data.csv"
    )
