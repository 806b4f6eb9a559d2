"""Options and helpers shared by the command-line tools."""

from __future__ import annotations

import logging
import os

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
