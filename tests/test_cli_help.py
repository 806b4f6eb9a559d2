"""Every CLI's ``--help`` as a user sees it (issue 27): rich markup read ``[openvino]`` / ``[gpu]`` as style tags and
printed ``pip install 'arena-toolkit'``, which installs neither extra. Each install hint must name an extra that
pyproject.toml defines."""

from __future__ import annotations

import importlib
import re

import pytest
import tomllib
from typer.testing import CliRunner

from tests.conftest import ROOT

PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
SCRIPTS = PYPROJECT["project"]["scripts"]
EXTRAS = set(PYPROJECT["project"]["optional-dependencies"])
WIDE = {"COLUMNS": "400", "TERMINAL_WIDTH": "400"}  # no wrapping inside a hint


def render_help(entry_point: str) -> str:
    module = importlib.import_module(entry_point.partition(":")[0])
    result = CliRunner().invoke(module.app, ["--help"], env=WIDE)
    assert result.exit_code == 0, result.output
    return result.output


@pytest.mark.parametrize("script", sorted(SCRIPTS))
def test_every_install_hint_in_help_names_an_extra_that_exists(script):
    text = render_help(SCRIPTS[script])
    assert "Usage:" in text and "--help" in text
    for hint in re.finditer(r"arena-toolkit(\S*)", text):
        extra = re.match(r"\[([a-z0-9_-]+)\]", hint.group(1))
        assert extra is not None, f"{script} --help: {hint.group(0)!r} names no extra (markup swallowed it?)"
        assert extra.group(1) in EXTRAS, f"{script} --help names arena-toolkit[{extra.group(1)}]; pyproject has " \
                                         f"{sorted(EXTRAS)}"
    assert "\\[" not in text  # the escape itself never shows


def test_arena_export_help_shows_its_install_hints():
    """The hints are there to be checked: --trt names [gpu], OpenVINO and --int8-static name [openvino]."""
    text = render_help(SCRIPTS["arena-export"])
    assert text.count("'arena-toolkit[gpu]'") >= 2 and text.count("'arena-toolkit[openvino]'") >= 2
    assert "'arena-toolkit'" not in text
