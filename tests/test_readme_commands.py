"""Docs that cannot drift: every ``arena-*`` command line in the README's code blocks is parsed by the real CLI, and
its backend / precision / cell values are checked against what the backends declare. The README once documented
``arena-infer ... --precision 4bit`` while the CLI refused it; that class of mistake fails here."""

from __future__ import annotations

import importlib
import re
import shlex
from pathlib import Path

import pytest
import tomllib
import typer

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
SCRIPTS = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
COMMAND = re.compile(r"(?:^|\s)(arena-[a-z]+|-m arena\.[a-z]+\.cli)\s")


def readme_commands() -> list[tuple[str, list[str]]]:
    """(command, arguments) for every arena command in the README's bash blocks; continuation lines joined,
    comments and ``[optional]`` brackets dropped, environment assignments and launchers (torchrun) skipped."""
    blocks = re.findall(r"```bash\n(.*?)```", README.read_text(), flags=re.S)
    out = []
    for block in blocks:
        for line in block.replace("\\\n", " ").splitlines():
            line = line.split("  #")[0].split(" # ")[0].strip()
            if line.startswith("#") or not COMMAND.search(" " + line + " "):
                continue
            words = [w for w in shlex.split(line.replace("[", "").replace("]", "")) if w != "..."]
            for i, word in enumerate(words):
                if word in SCRIPTS:
                    out.append((word, words[i + 1:]))
                    break
                if word == "-m" and words[i + 1].startswith("arena."):
                    module = words[i + 1]
                    name = next(n for n, target in SCRIPTS.items() if target.split(":")[0] == module)
                    out.append((name, words[i + 2:]))
                    break
    return out


COMMANDS = readme_commands()


def test_the_readme_documents_every_command():
    named = {name for name, _ in COMMANDS}
    assert named == set(SCRIPTS), f"commands in pyproject without a README example: {set(SCRIPTS) - named}"
    assert len(COMMANDS) >= 20


def _parse(name: str, args: list[str]) -> dict:
    module = importlib.import_module(SCRIPTS[name].split(":")[0])
    command = typer.main.get_command(module.app)
    ctx = command.make_context(name, list(args), resilient_parsing=False)
    return ctx.params


@pytest.mark.parametrize("name,args", COMMANDS, ids=[f"{n} {' '.join(a)[:60]}" for n, a in COMMANDS])
def test_readme_command_parses_and_its_values_are_declared(name, args):
    from arena.cli.options import backend_precisions

    params = _parse(name, args)  # unknown options, missing arguments and wrong types raise here
    allowed = backend_precisions()
    backend = params.get("backend")
    if backend is not None:
        assert backend in allowed, f"{name}: --backend {backend} is not a registered backend"
        precision = params.get("precision") or "auto"
        assert precision in allowed[backend], f"{name}: --precision {precision} is not declared for {backend}"
    for cells in (params.get("cells"), params.get("backends")):
        if cells:
            from arena.bench.precheck import bench_backends
            from arena.bench.runner import COMPILED

            for cell in cells.split(","):
                backend_part = cell.strip().rpartition("/")[0] or cell.strip()
                b, _, p = backend_part.partition(":")
                assert b in bench_backends(), f"{name}: cell backend {b} is not registered"
                assert (p or "auto") in allowed["torch" if b == COMPILED else b], f"{name}: cell {cell}"


def test_the_4bit_line_reaches_the_gpu_check_not_the_choice_list(tmp_path):
    """The README's decoder line with --precision 4bit parses, and on a machine without a GPU it stops with the
    bitsandbytes line, not with "must be one of"."""
    from arena.cli.options import check_precision
    from arena.errors import ConfigError
    from arena.machine.gpu import torch_gpus

    lines = [a for n, a in COMMANDS if n == "arena-infer" and "4bit" in a]
    assert lines, "the README's 4-bit decoder line is gone"
    params = _parse("arena-infer", lines[0])
    if torch_gpus():
        pytest.skip("a GPU is present: 4-bit may be possible here")
    with pytest.raises(ConfigError, match="needs an NVIDIA GPU"):
        check_precision("--precision", params["backend"], params["precision"], params.get("device") or "auto")
