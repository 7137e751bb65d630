"""The docstring examples of atomgen.eval run as written."""

from __future__ import annotations

import doctest

import pytest

import atomgen.eval
import atomgen.eval.modes
import atomgen.eval.statistics
import atomgen.eval.vae


@pytest.mark.parametrize(
    "module", [atomgen.eval, atomgen.eval.statistics, atomgen.eval.modes, atomgen.eval.vae]
)
def test_docstring_examples(module):
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0 and result.failed == 0
