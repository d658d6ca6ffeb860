"""--device strings become devices this machine has, or one clear error naming the option."""

import pytest
import torch

from avseg.device import resolve_device
from avseg.errors import UsageError


def test_auto_and_cpu():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    assert resolve_device(torch.device("cpu")) == torch.device("cpu")


@pytest.mark.parametrize("value", ["banana", "cuda:x", ""])
def test_unknown_strings_name_the_option(value):
    with pytest.raises(UsageError, match=r"--device '.*': not a device"):
        resolve_device(value)


def test_cuda_without_cuda(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(UsageError, match=r"--gpu 'cuda': .*no CUDA device"):
        resolve_device("cuda", arg="--gpu")


def test_cuda_index_beyond_the_machine(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    assert resolve_device("cuda:0") == torch.device("cuda:0")
    with pytest.raises(UsageError, match="only 1 CUDA device"):
        resolve_device("cuda:3")


def test_other_device_types_are_refused():
    with pytest.raises(UsageError):
        resolve_device("meta")
