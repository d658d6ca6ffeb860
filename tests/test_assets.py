"""Packaged weights are named ``avseg:<name>``; an unknown name is a one-line error listing what exists."""

from __future__ import annotations

import pytest

from avseg.assets import ASSETS, resolve_weights
from avseg.errors import UsageError
from avseg.layers.sam2 import build_sam2, tiny_sam2_config


def test_sources_without_the_prefix_pass_through():
    assert resolve_weights("facebook/sam2.1-hiera-tiny") == "facebook/sam2.1-hiera-tiny"
    assert resolve_weights("/data/sam2-folder") == "/data/sam2-folder"


def test_an_unknown_packaged_name_is_one_line_naming_it():
    with pytest.raises(UsageError, match=r"unknown packaged weights avseg:nope; available: "):
        resolve_weights("avseg:nope")
    # build_sam2 loads packaged weights even without pretrained=True, so the name is checked there too.
    assert "nope" not in ASSETS
    with pytest.raises(UsageError, match="avseg:nope"):
        build_sam2(tiny_sam2_config(64, weights="avseg:nope"), pretrained=False)
