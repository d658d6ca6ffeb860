"""Run the ``Example:`` blocks of the metric modules."""

import doctest
import importlib

import pytest


@pytest.mark.parametrize("name", ["binary", "semantic", "davis", "presets", "protocols", "accumulator"])
def test_doctests(name):
    module = importlib.import_module(f"avseg.metrics.{name}")
    result = doctest.testmod(module, optionflags=doctest.NORMALIZE_WHITESPACE)
    assert result.attempted > 0
    assert result.failed == 0
