"""Options and helpers shared by the command-line tools."""

from __future__ import annotations

import logging
import os
import sys
from typing import Any

from arena.encode import EncoderConfig
from arena.errors import ConfigError


def setup_logging(verbose: bool = False) -> None:
    logging.basicConfig(level=logging.DEBUG if verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("arena").setLevel(logging.DEBUG if verbose else logging.INFO)
    try:  # transformers' own progress bars ("Loading weights", "Writing model shards") are noise here
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
    except ImportError:  # pragma: no cover
        pass
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


def run_app(app: Any, args: list[str] | None = None) -> None:
    """Run a typer app as a console script, with usage mistakes (a missing argument, ``--batch-size abc``, an
    unknown option) printed like every other mistake: one ``error:`` line on stderr, exit code 2."""
    import typer

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
    except _click_errors("Abort"):
        print("error: interrupted", file=sys.stderr)
        raise SystemExit(130) from None
    if isinstance(code, int) and code:
        raise SystemExit(code)
