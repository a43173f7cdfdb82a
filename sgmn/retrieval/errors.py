"""Errors of the retrieval store, and the id rule that keeps every path inside the store."""

from __future__ import annotations

import re

from sgmn.errors import DataError, SGMNError

# Ids become file and folder names inside the store, so only a safe alphabet is accepted and
# anything that could name a parent or hidden path ("..", ".x") is refused outright.
ID_PATTERN = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9._-]*")
MAX_ID_LENGTH = 128


class NotFound(KeyError, SGMNError):
    """An unknown room or product (a ``KeyError``, so ``except KeyError`` catches it)."""

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:  # KeyError would print the repr of the message
        return self.message


class InvalidId(DataError, ValueError):
    """A room or product id outside ``[A-Za-z0-9._-]`` (not starting with '.'), or too long."""


class AlreadyExists(SGMNError, ValueError):
    """Adding a room or product that is already in the store (use update / replace)."""


class ModelMismatch(SGMNError):
    """The store's vectors were computed by another model than the one asked to use them."""


class NoModel(SGMNError):
    """An operation needs a model (encode images or clips) and the retriever has none."""


class StoreCorrupt(DataError):
    """The store on disk does not agree with its own metadata (a missing vector file, ...)."""


def validate_id(value: object, kind: str = "id") -> str:
    """Return ``value`` if it is a safe id, else raise :class:`InvalidId` saying why."""
    if not isinstance(value, str):
        raise InvalidId(f"{kind} must be a string, got {type(value).__name__}", key=repr(value))
    if not value:
        raise InvalidId(f"{kind} must not be empty", key=value)
    if len(value) > MAX_ID_LENGTH:
        raise InvalidId(f"{kind} is longer than {MAX_ID_LENGTH} characters", key=value[:40] + "...")
    if not ID_PATTERN.fullmatch(value):
        raise InvalidId(
            f"{kind} may only contain letters, digits, '.', '_' and '-' and must not start with '.'",
            key=value,
        )
    return value


class ReadOnlyStore(SGMNError):
    """A write to a store that was opened read-only (or that the process may not write)."""


class StoreBusy(SGMNError):
    """A write waited too long for another process's write to the same store to finish."""
