"""The project's exception types, and the one place that turns them into CLI messages.

Every error a user can cause (bad CSV, missing model folder, failed parity check) is an :class:`ArenaError`.
The CLIs print its message without a traceback and exit with its ``exit_code``; anything else is a bug and keeps
its traceback.
"""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from typing import Any, TypeVar


class ArenaError(Exception):
    """A mistake in the user's input or environment, with a message that says what to change."""

    exit_code = 2


class DataError(ArenaError):
    """A CSV that cannot be read as the Kaggle layout. The message names the file, row and column."""

    def __init__(
        self,
        message: str,
        *,
        path: str | None = None,
        row_id: Any = None,
        line: int | None = None,
        column: str | None = None,
    ) -> None:
        self.path, self.row_id, self.line, self.column = path, row_id, line, column
        where = []
        if path is not None:
            where.append(f"file {path}")
        if line is not None:
            where.append(f"line {line}")
        if row_id is not None:
            where.append(f"id {row_id}")
        if column is not None:
            where.append(f"column {column!r}")
        super().__init__(f"{', '.join(where)}: {message}" if where else message)


class ModelError(ArenaError):
    """A model folder that is missing, incomplete, untrusted or of the wrong shape."""


class TensorSpecError(ModelError):
    """A graph whose inputs or outputs differ from arena's tensor spec (:data:`arena.artifacts.INPUT_SPECS`):
    found before any value is compared."""


class ConfigError(ArenaError):
    """An option value that cannot work (fold index out of range, max length too long, ...)."""


class TrainingError(ArenaError):
    """Training diverged (NaN loss) or cannot continue."""

    exit_code = 3


class ParityError(ArenaError):
    """An exported model disagrees with PyTorch beyond tolerance; no artefact is kept."""

    exit_code = 4


class BackendUnavailable(ArenaError):
    """A backend was asked for but the machine or the model folder cannot provide it."""


class BenchmarkCheckFailed(ArenaError):
    """``arena-bench --check``: a measured ratio fell below its threshold."""

    exit_code = 5


F = TypeVar("F", bound=Callable[..., Any])


def cli_errors(fn: F) -> F:
    """Decorate a CLI command: print an :class:`ArenaError` as one line on stderr and exit with its code."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except ArenaError as exc:
            print(f"error: {exc}", file=sys.stderr)
            raise SystemExit(exc.exit_code) from None

    return wrapper  # type: ignore[return-value]
