"""Options and helpers shared by the command-line tools."""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Callable
from typing import Any

from arena.encode import EncoderConfig
from arena.errors import ConfigError


def setup_logging(verbose: bool = False) -> None:
    logging.basicConfig(level=logging.DEBUG if verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("arena").setLevel(logging.DEBUG if verbose else logging.INFO)
    # transformers' own progress bars ("Loading weights", "Writing model shards") are noise here. transformers reads
    # this variable (through huggingface_hub) when it is first imported, so commands that never load it (serving an
    # export) do not import it to switch them off; where it is already loaded, it is told directly.
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    if "transformers" in sys.modules:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
    elif "huggingface_hub" in sys.modules:  # it read the variable already: transformers would ask it later
        from huggingface_hub.utils import disable_progress_bars

        disable_progress_bars()
    for noisy in ("transformers", "onnxruntime", "torch", "matplotlib", "urllib3", "filelock", "httpx"):
        logging.getLogger(noisy).setLevel(logging.ERROR)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "true")


def parse_shares(text: str) -> tuple[float, float, float]:
    try:
        parts = tuple(float(x) for x in text.split(","))
    except ValueError:
        raise ConfigError(f"--shares takes three numbers such as 0.2,0.4,0.4; got {text!r}") from None
    if len(parts) != 3:
        raise ConfigError(f"--shares takes three numbers (prompt, A, B); got {text!r}")
    return parts  # type: ignore[return-value]


def encoder_config(max_length: int, strategy: str, shares: str, head_fraction: float) -> EncoderConfig:
    return EncoderConfig(max_length=max_length, strategy=strategy, shares=parse_shares(shares),
                         head_fraction=head_fraction)


def _click_errors(name: str) -> tuple[type[BaseException], ...]:
    """``name`` (UsageError, Abort) from click and from the copy of click that newer typer releases vendor."""
    import importlib

    found = []
    for module in ("typer._click.exceptions", "click.exceptions"):
        try:
            found.append(getattr(importlib.import_module(module), name))
        except (ImportError, AttributeError):
            continue
    return tuple(found)


INTERRUPTED = 130
"""The exit status of a command stopped by Ctrl-C (128 + SIGINT), as shells report it."""
_interrupt_notes: list[Callable[[], str]] = []


def on_interrupt(note: Callable[[], str]) -> None:
    """Register what the running command would say it kept if Ctrl-C stopped it now (called once its output is
    known; :func:`run_app` prints the note of the last registration)."""
    _interrupt_notes.append(note)


def _interrupted_line() -> str:
    kept = "outputs are written to temporary files and renamed into place, so no half-written file was kept"
    if _interrupt_notes:
        try:
            kept = _interrupt_notes[-1]()
        except Exception as exc:  # noqa: BLE001 - the note must not hide the interruption itself
            kept = f"could not tell what was kept ({type(exc).__name__}: {exc})"
    return f"error: interrupted (Ctrl-C); {kept}"


def run_app(app: Any, args: list[str] | None = None) -> None:
    """Run a typer app as a console script, with usage mistakes (a missing argument, ``--batch-size abc``, an
    unknown option) printed like every other mistake: one ``error:`` line on stderr, exit code 2. Ctrl-C ends in one
    ``error: interrupted`` line saying what the command kept (:func:`on_interrupt`), exit code 130: typer turns the
    KeyboardInterrupt into that return code (older click releases into ``Abort``)."""
    import typer

    _interrupt_notes.clear()
    command = typer.main.get_command(app)
    name = os.path.basename(sys.argv[0]) if sys.argv and sys.argv[0] else "arena"
    if name.endswith(".py") or name in ("-c", "-m"):
        name = command.name or "arena"
    try:
        code = command.main(args=args, prog_name=name, standalone_mode=False)
    except _click_errors("UsageError") as exc:
        message = " ".join(exc.format_message().split())  # type: ignore[attr-defined]
        print(f"error: {message} (see {name} --help)", file=sys.stderr)
        raise SystemExit(2) from None
    except (KeyboardInterrupt, *_click_errors("Abort")):
        code = INTERRUPTED
    if code == INTERRUPTED:
        print(_interrupted_line(), file=sys.stderr)
        raise SystemExit(INTERRUPTED) from None
    if isinstance(code, int) and code:
        raise SystemExit(code)
