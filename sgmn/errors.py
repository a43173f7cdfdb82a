"""Errors that name where bad input is and why, and the fail/skip policy readers share."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Optional, Union

OnError = Literal["raise", "skip"]


class SGMNError(Exception):
    """Base class of the project's own errors."""


class DataError(SGMNError):
    """Malformed or missing input data, located by file, line and/or key."""

    def __init__(
        self,
        reason: str,
        file: Optional[Union[str, Path]] = None,
        line: Optional[int] = None,
        key: Optional[str] = None,
    ):
        self.reason = reason
        self.file = str(file) if file is not None else None
        self.line = line
        self.key = key
        where = []
        if self.file:
            where.append(self.file)
        if line is not None:
            where.append(f"line {line}")
        if key is not None:
            where.append(f"key {key!r}")
        super().__init__(f"{', '.join(where)}: {reason}" if where else reason)


class MediaError(DataError):
    """An image or video that cannot be read or decoded."""


@dataclass
class ErrorPolicy:
    """Raise on the first bad item, or skip it and count the reason.

    ``handle`` is called inside a reader's ``except DataError`` block: it re-raises under the
    ``raise`` policy and records the skip under ``skip``. Nothing is ever replaced by another item.
    """

    on_error: OnError = "raise"
    skipped: Counter = field(default_factory=Counter)
    examples: dict[str, str] = field(default_factory=dict)  # reason kind -> first message

    def __post_init__(self):
        if self.on_error not in ("raise", "skip"):
            raise ValueError(f"on_error must be 'raise' or 'skip', got {self.on_error!r}")

    def handle(self, err: DataError, kind: str) -> None:
        if self.on_error == "raise":
            raise err
        self.skipped[kind] += 1
        self.examples.setdefault(kind, str(err))


class UsageError(SGMNError, ValueError):
    """A command given options that cannot work (an unknown model or key, a run folder in use...)."""


def exit_with(message: str, code: int = 2):
    """Print ``error: message`` as one line on stderr and leave with ``code`` (CLI user mistakes)."""
    import sys

    print(f"error: {message}", file=sys.stderr)
    raise SystemExit(code)


class user_errors:
    """``with user_errors(): ...`` turns the project's own errors (and missing files) into one
    ``error: ...`` line and exit code 2: a user's mistake is not a bug, so no traceback."""

    def __enter__(self):
        return self

    def __exit__(self, kind, err, tb):
        if err is not None and isinstance(err, (SGMNError, FileNotFoundError)):
            message = getattr(err, "message", None) or str(err)
            exit_with(" ".join(message.split()) if message else kind.__name__)
        return False
