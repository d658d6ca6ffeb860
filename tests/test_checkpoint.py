"""Checkpoints: atomic folders, strict loading with named keys, pointers, weights_only training state."""

import json
import os
import stat

import pytest
import torch

from avseg.checkpoint import (
    CheckpointError,
    CheckpointExistsError,
    NotACheckpointError,
    load_training_state,
    load_weights,
    read_checkpoint_config,
    resolve_checkpoint,
    save_checkpoint,
    write_pointer,
)
from avseg.errors import MissingFileError, UsageError
from tests.toy_model import ToyConfig, ToyModel


def test_save_load_round_trip(tmp_path):
    torch.manual_seed(0)
    model = ToyModel(ToyConfig(width=3))
    state = {"step": 7, "optimizer": {"lr": torch.tensor(0.1)}, "rng": torch.get_rng_state()}
    path = save_checkpoint(tmp_path / "ck", model, preset="toy-3", training_state=state, meta={"J": 0.5})
    config = read_checkpoint_config(path)
    assert (
        config["family"] == "toy" and config["preset"] == "toy-3" and config["config"] == {"width": 3, "num_classes": 1}
    )
    assert config["meta"] == {"J": 0.5} and "avseg_version" in config
    other = ToyModel(ToyConfig(width=3))
    load_weights(other, path)
    for a, b in zip(model.state_dict().values(), other.state_dict().values()):
        assert torch.equal(a, b)
    loaded = load_training_state(path)
    assert loaded["step"] == 7 and torch.equal(loaded["rng"], state["rng"])
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp folders left


def test_strict_loading_names_keys(tmp_path):
    path = save_checkpoint(tmp_path / "ck", ToyModel(ToyConfig(width=3)))
    with pytest.raises(CheckpointError, match=r"model\.safetensors.*shape-mismatched keys: conv\.bias, conv\.weight"):
        load_weights(ToyModel(ToyConfig(width=5)), path)


def test_overwrite_is_explicit_and_atomic(tmp_path):
    model = ToyModel(ToyConfig())
    save_checkpoint(tmp_path / "ck", model, meta={"v": 1})
    with pytest.raises(FileExistsError):
        save_checkpoint(tmp_path / "ck", model)
    save_checkpoint(tmp_path / "ck", model, meta={"v": 2}, overwrite=True)
    assert read_checkpoint_config(tmp_path / "ck")["meta"] == {"v": 2}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ck"]


def test_failed_write_leaves_nothing(tmp_path, monkeypatch):
    import avseg.checkpoint as ck

    def boom(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(ck, "save_file", boom)
    with pytest.raises(RuntimeError, match="disk full"):
        save_checkpoint(tmp_path / "ck", ToyModel(ToyConfig()))
    assert list(tmp_path.iterdir()) == []


def test_pointers(tmp_path):
    a = save_checkpoint(tmp_path / "step-1", ToyModel(ToyConfig()), meta={"s": 1})
    b = save_checkpoint(tmp_path / "step-2", ToyModel(ToyConfig()), meta={"s": 2})
    write_pointer(tmp_path, "latest", b, {"step": 2})
    write_pointer(tmp_path, "best", a)
    assert resolve_checkpoint(tmp_path) == b
    assert resolve_checkpoint(tmp_path, "best") == a
    assert json.loads((tmp_path / "latest.json").read_text()) == {"checkpoint": "step-2", "step": 2}
    with pytest.raises(MissingFileError, match="nothing"):
        resolve_checkpoint(tmp_path / "nothing")
    assert load_training_state(a) is None


def test_training_state_refuses_pickled_code(tmp_path):
    path = save_checkpoint(tmp_path / "ck", ToyModel(ToyConfig()), training_state={"step": 1})

    class Evil:
        def __reduce__(self):
            return (print, ("executed",))

    torch.save({"x": Evil()}, path / "training_state.pt")
    with pytest.raises(CheckpointError, match=r"training_state\.pt"):
        load_training_state(path)


def test_run_folder_resolves_through_checkpoints_subfolder(tmp_path):
    ck = save_checkpoint(tmp_path / "run" / "checkpoints" / "step-3", ToyModel(ToyConfig()))
    write_pointer(tmp_path / "run" / "checkpoints", "best", ck)
    assert resolve_checkpoint(tmp_path / "run", "best") == ck
    with pytest.raises(MissingFileError):
        resolve_checkpoint(tmp_path / "run", "latest")


@pytest.mark.parametrize("umask,folder_mode,file_mode", [(0o022, 0o755, 0o644), (0o077, 0o700, 0o600)])
def test_modes_follow_the_umask(tmp_path, umask, folder_mode, file_mode):
    # A checkpoint shared with colleagues must be readable by them under the usual umask (mkdtemp/mkstemp gave
    # 0700/0600 whatever the umask); a private umask keeps it private.
    old = os.umask(umask)
    try:
        path = save_checkpoint(tmp_path / "ck", ToyModel(ToyConfig()), training_state={"step": 1})
        write_pointer(tmp_path, "latest", path)
        save_checkpoint(path, ToyModel(ToyConfig()), overwrite=True)  # the replacing folder too
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == folder_mode
    files = sorted(p.name for p in path.iterdir())
    assert files == ["config.json", "model.safetensors"]
    for file in [*path.iterdir(), tmp_path / "latest.json"]:
        assert stat.S_IMODE(file.stat().st_mode) == file_mode, file


def test_existing_checkpoint_is_a_usage_error_naming_the_path(tmp_path):
    path = save_checkpoint(tmp_path / "ck", ToyModel(ToyConfig()))
    with pytest.raises(CheckpointExistsError) as err:
        save_checkpoint(path, ToyModel(ToyConfig()))
    assert isinstance(err.value, UsageError) and isinstance(err.value, FileExistsError)
    assert str(err.value) == f"{path}: a checkpoint already exists there (pass overwrite=True to replace it)"
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(UsageError, match=r"notes\.txt: a file or folder already exists there"):
        save_checkpoint(tmp_path / "notes.txt", ToyModel(ToyConfig()))


def test_existing_folder_that_is_no_checkpoint_is_not_called_missing(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(NotACheckpointError) as err:
        resolve_checkpoint(empty)
    assert str(err.value) == f"{empty}: is not a checkpoint folder or training run: no config.json and no latest.json"
    assert isinstance(err.value, MissingFileError)  # still caught by callers that handled the old error
    run = tmp_path / "run"
    ck = save_checkpoint(run / "checkpoints" / "step-3", ToyModel(ToyConfig()))
    write_pointer(run / "checkpoints", "best", ck)
    with pytest.raises(NotACheckpointError, match=r"no latest\.json \(pointers present: checkpoints/best\.json\)$"):
        resolve_checkpoint(run)
    with pytest.raises(NotACheckpointError, match="is a file, not a checkpoint folder or training run; give its"):
        resolve_checkpoint(ck / "config.json")
    with pytest.raises(NotACheckpointError) as err:
        resolve_checkpoint(ck / "model.safetensors")
    assert "not found" not in str(err.value)


def test_pointer_to_a_missing_or_broken_checkpoint(tmp_path):
    write_pointer(tmp_path, "latest", tmp_path / "step-9")
    with pytest.raises(NotACheckpointError) as err:
        resolve_checkpoint(tmp_path)
    assert str(err.value) == (
        f"{tmp_path / 'latest.json'}: names checkpoint 'step-9', but {tmp_path / 'step-9'} does not exist"
    )
    (tmp_path / "step-9").mkdir()
    with pytest.raises(NotACheckpointError, match=r"step-9: is not a checkpoint folder \(no config\.json\), yet .*"):
        resolve_checkpoint(tmp_path)


def test_training_state_error_never_suggests_unpickling(tmp_path):
    path = save_checkpoint(tmp_path / "ck", ToyModel(ToyConfig()), training_state={"step": 1})

    class Evil:
        def __reduce__(self):
            return (print, ("executed",))

    torch.save({"x": Evil()}, path / "training_state.pt")
    with pytest.raises(CheckpointError) as err:
        load_training_state(path)
    message = str(err.value)
    assert message.startswith(f"{path / 'training_state.pt'}: cannot read training state: it pickles print,")
    assert "weights_only" not in message and "likely succeed" not in message and "\n" not in message
    (path / "training_state.pt").write_text("not a torch file")
    with pytest.raises(CheckpointError, match=r"cannot read training state: not a PyTorch file \(torch\.save writes"):
        load_training_state(path)


def test_cli_eval_on_a_folder_that_is_no_checkpoint_is_one_line(tmp_path, capsys):
    from avseg.cli import main

    empty = tmp_path / "empty"
    empty.mkdir()
    status = main(["eval", "--checkpoint", str(empty), "--data", str(tmp_path)])
    lines = capsys.readouterr().err.strip().splitlines()
    assert status == 2
    assert lines == [
        f"avseg: error: {empty}: is not a checkpoint folder or training run: no config.json and no best.json"
    ]


def test_eval_and_predict_fall_back_to_the_other_pointer_the_same_way(tmp_path):
    """One resolve_checkpoint serves eval and predict: a run without best.json falls back to latest.json, warning."""
    import warnings

    from avseg.checkpoint import CheckpointPointerWarning

    run = tmp_path / "run" / "checkpoints"
    (run / "step-1").mkdir(parents=True)
    (run / "step-1" / "config.json").write_text("{}")
    write_pointer(run, "latest", run / "step-1")
    with pytest.warns(CheckpointPointerWarning, match="has no best.json; using latest.json"):
        assert resolve_checkpoint(tmp_path / "run", "best", fallback="latest") == run / "step-1"
    with pytest.raises(NotACheckpointError, match=r"no best\.json"):
        resolve_checkpoint(tmp_path / "run", "best")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert resolve_checkpoint(tmp_path / "run", "latest", fallback="best") == run / "step-1"
