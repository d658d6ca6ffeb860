"""The pinned package set: every package avseg pulls in is locked, so a fresh clone tests what CI tested."""

import re
from importlib import metadata
from pathlib import Path

from packaging.requirements import Requirement

ROOT = Path(__file__).parents[1]
EXTRAS = ("plot", "dev")  # what `make test` installs


def _lock() -> dict[str, str]:
    pins = {}
    for line in (ROOT / "constraints-lock.txt").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, _, version = line.partition("==")
            assert version, f"constraints-lock.txt: {line!r} is not an exact pin"
            pins[_normal(name)] = version
    return pins


def _normal(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _closure() -> set[str]:
    """Names of the installed distributions avseg (with the test extras) needs, transitively."""
    todo = [
        Requirement(r)
        for r in metadata.requires("avseg") or []
        if Requirement(r).marker is None or any(Requirement(r).marker.evaluate({"extra": e}) for e in EXTRAS)
    ]
    seen: set[str] = set()
    while todo:
        req = todo.pop()
        name = _normal(req.name)
        if name in seen:
            continue
        try:
            dist = metadata.distribution(req.name)
        except metadata.PackageNotFoundError:
            continue  # a dependency for another platform or Python version
        seen.add(name)
        for sub in dist.requires or []:
            sub_req = Requirement(sub)
            if sub_req.marker is None or sub_req.marker.evaluate({"extra": ""}):
                todo.append(sub_req)
    return seen


def test_every_dependency_is_locked():
    lock = _lock()
    unlocked = sorted(_closure() - set(lock) - {"torch"})  # torch is pinned in constraints.txt
    assert not unlocked, (
        f"not in constraints-lock.txt (run `make test-latest && make lock VENV=.venv-latest`): {unlocked}"
    )


def test_torch_is_pinned_once():
    assert (ROOT / "constraints.txt").read_text().split() == ["torch==2.13.0"]
    assert "torch" not in _lock()
