"""Sharing models on the Hugging Face Hub, with no network: the Hub is a local folder laid out as a Hub repository,
reached through huggingface_hub's own API monkeypatched to read and write that folder."""

import json
import pickle
import shutil
from pathlib import Path

import huggingface_hub
import pytest
import torch
import yaml
from huggingface_hub import constants
from huggingface_hub.errors import LocalEntryNotFoundError

from avseg.checkpoint import resolve_checkpoint, save_checkpoint
from avseg.cli import main
from avseg.config import config_to_dict
from avseg.data.types import random_batch
from avseg.hub import HUB_FILES, HubError, HubNotFoundError, is_hub_id, push_to_hub
from avseg.models import create_model, from_pretrained, load_model


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    # tpavi-tiny without its 22M-parameter sentence encoder: the same architecture code, a 1.1M-parameter file.
    return create_model("tpavi-tiny", **{"text.encoder": None}).eval()


@pytest.fixture
def hub(tmp_path, monkeypatch):
    """A fake Hub: ``HfApi.create_repo`` / ``upload_folder`` write ``hub/<org>/<name>``, ``snapshot_download`` returns
    that folder. Records the calls."""
    root = tmp_path / "hub"
    calls: dict[str, list] = {"create_repo": [], "upload_folder": [], "snapshot_download": []}

    class FakeApi:
        def __init__(self, token=None):
            self.token = token

        def create_repo(self, repo_id, **kwargs):
            calls["create_repo"].append((repo_id, kwargs))
            (root / repo_id).mkdir(parents=True, exist_ok=True)
            return f"https://huggingface.co/{repo_id}"

        def upload_folder(self, *, repo_id, folder_path, allow_patterns=None, **kwargs):
            calls["upload_folder"].append((repo_id, sorted(p.name for p in Path(folder_path).iterdir()), kwargs))
            for file in Path(folder_path).iterdir():
                if allow_patterns is None or file.name in allow_patterns:
                    shutil.copyfile(file, root / repo_id / file.name)
            return f"https://huggingface.co/{repo_id}/commit/0123abcd"

    def snapshot_download(repo_id, *, allow_patterns=None, **kwargs):
        calls["snapshot_download"].append((repo_id, allow_patterns))
        if not (root / repo_id).is_dir():
            raise LocalEntryNotFoundError("Cannot find an appropriate cached snapshot folder")
        return str(root / repo_id)

    monkeypatch.setattr(huggingface_hub, "HfApi", FakeApi)
    monkeypatch.setattr(huggingface_hub, "snapshot_download", snapshot_download)
    return root, calls


def assert_same_model(a, b):
    assert type(a) is type(b) and config_to_dict(a.config) == config_to_dict(b.config) and a.preset == b.preset
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for key in sa:
        assert sa[key].dtype == sb[key].dtype and torch.equal(sa[key], sb[key]), key
    batch = random_batch(1, 2, 64)
    with torch.no_grad():
        assert torch.equal(a.eval()(batch).mask_logits, b.eval()(batch).mask_logits)


def card_header(text: str) -> dict:
    assert text.startswith("---\n")
    return yaml.safe_load(text.split("---\n")[1])


def test_save_pretrained_round_trips_bit_exactly_through_a_hub_layout_folder(model, tmp_path):
    folder = model.save_pretrained(tmp_path / "repo", license="apache-2.0", repo_id="avseg/tpavi-tiny-test")
    assert sorted(p.name for p in folder.iterdir()) == sorted(HUB_FILES)
    assert_same_model(model, from_pretrained(folder))
    card = (folder / "README.md").read_text()
    header = card_header(card)
    assert header["license"] == "apache-2.0" and header["library_name"] == "avseg"
    assert "tpavi-tiny" in header["tags"] and header["pipeline_tag"]
    assert "preset `tpavi-tiny`" in card and 'from_pretrained("avseg/tpavi-tiny-test")' in card
    assert "No evaluation results are recorded" in card


def test_push_to_hub_then_from_pretrained_by_hub_id(model, hub):
    root, calls = hub
    url = model.push_to_hub("avseg/tiny", license="mit", private=True)
    assert url == "https://huggingface.co/avseg/tiny/commit/0123abcd"
    assert calls["create_repo"] == [("avseg/tiny", {"repo_type": "model", "private": True, "exist_ok": True})]
    assert sorted(p.name for p in (root / "avseg/tiny").iterdir()) == sorted(HUB_FILES)
    assert card_header((root / "avseg/tiny/README.md").read_text())["license"] == "mit"

    loaded = from_pretrained("avseg/tiny")
    assert_same_model(model, loaded)
    # Only the checkpoint's files are asked for: never a pickle (.bin, .pt) the repository might also hold.
    assert calls["snapshot_download"] == [("avseg/tiny", list(HUB_FILES))]
    # eval and predict resolve --checkpoint through resolve_checkpoint: a Hub id gives the snapshot folder.
    assert resolve_checkpoint("avseg/tiny", "best", fallback="latest") == root / "avseg/tiny"
    assert_same_model(model, load_model("avseg/tiny"))


def test_pushing_a_trained_checkpoint_uploads_no_training_state_and_cards_its_scores(model, hub, tmp_path):
    root, calls = hub
    meta = {
        "step": 400,
        "epoch": 3,
        "seed": 0,
        "val_split": "val",
        "data": {"format": "refavs", "image_size": 128, "num_frames": 4},
        "metrics": {"J": 0.61, "F": 0.7, "J&F": 0.655},
    }
    run = tmp_path / "run" / "checkpoints"
    save_checkpoint(run / "step-0000400", model, preset="tpavi-tiny", training_state={"step": 400}, meta=meta)
    (run / "best.json").write_text(json.dumps({"checkpoint": "step-0000400"}))
    results = tmp_path / "r.json"
    settings = {"protocol": {"kind": "official", "name": "Ref-AVS test", "preset": "refavs", "group": "batch:4"}}
    summary = {"J": 0.5, "F": 0.6, "J&F": 0.55}
    results.write_text(json.dumps({"splits": {"test_s": {"summary": summary, "settings": settings}}}))

    push_to_hub(tmp_path / "run", "avseg/trained", license="cc-by-nc-4.0", results=results)

    assert "training_state.pt" in [p.name for p in (run / "step-0000400").iterdir()]
    assert calls["upload_folder"][0][1] == sorted(HUB_FILES)
    card = (root / "avseg/trained/README.md").read_text()
    assert card_header(card)["license"] == "cc-by-nc-4.0"
    assert "Dataset format `refavs`, frames read at 128x128 px, 4 frames per clip" in card
    assert "| val at step 400 | 0.6100 | 0.7000 | 0.6550 | `avseg train` validation: metric preset `refavs`" in card
    assert "| test_s | 0.5000 | 0.6000 | 0.5500 | `avseg eval --protocol official`: preset `refavs`, grouping " in card
    assert_same_model(model, from_pretrained("avseg/trained"))


def test_loading_never_unpickles(model, tmp_path, monkeypatch):
    folder = tmp_path / "ckpt"
    save_checkpoint(folder, model, preset="tpavi-tiny", training_state={"step": 1})

    def refuse(*args, **kwargs):
        raise AssertionError("a pickle was read")

    monkeypatch.setattr(torch, "load", refuse)
    monkeypatch.setattr(pickle, "load", refuse)
    monkeypatch.setattr(pickle, "loads", refuse)
    assert_same_model(model, from_pretrained(folder))


def test_a_local_folder_wins_over_a_hub_id_of_the_same_spelling(model, hub, tmp_path, monkeypatch):
    _, calls = hub
    model.save_pretrained(tmp_path / "org" / "name")
    monkeypatch.chdir(tmp_path)
    assert_same_model(model, from_pretrained("org/name"))
    assert calls["snapshot_download"] == []


def test_a_hub_repository_without_an_avseg_model_is_refused_naming_it(hub):
    root, _ = hub
    (root / "someone/not-avseg").mkdir(parents=True)
    (root / "someone/not-avseg/README.md").write_text("# a model of another library\n")
    with pytest.raises(HubError, match=r"^someone/not-avseg: .*holds no avseg model \(no config.json and no model"):
        from_pretrained("someone/not-avseg")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("org/name", True),
        ("OpenNLPLab/tpavi-r50_s4.v1", True),
        ("name", False),
        ("/abs/org/name", False),
        ("a/b/c", False),
        ("./name", False),
        ("org/..", False),
        ("org/na--me", False),
        ("org/name-", False),
    ],
)
def test_is_hub_id(text, expected):
    assert is_hub_id(text) is expected


@pytest.mark.parametrize("command", ["eval", "predict"])
def test_offline_unknown_hub_id_is_one_error_line(command, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "cache"))
    monkeypatch.chdir(tmp_path)
    video = tmp_path / "clip.mp4"
    video.write_bytes(b"not decoded: the checkpoint is resolved first")
    argv = {
        "eval": ["eval", "--checkpoint", "nobody/missing-model", "--data", str(tmp_path)],
        "predict": ["predict", str(video), "--checkpoint", "nobody/missing-model", "--out", str(tmp_path / "o.mp4")],
    }[command]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert err[0].startswith("avseg: error: nobody/missing-model: ") and "HF_HUB_OFFLINE" in err[0]
    with pytest.raises(HubNotFoundError) as caught:
        resolve_checkpoint("nobody/missing-model")
    assert isinstance(caught.value, FileNotFoundError)  # as a missing local checkpoint folder is
