"""One error type for bad input, and the one-line report scripts give for it instead of a traceback."""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator


class TangshiError(ValueError):
    """Bad input from the user: a setting, a corpus, a checkpoint or a prompt. The message says what is allowed."""


@contextlib.contextmanager
def reported() -> Iterator[None]:
    """Turn a TangshiError into ``error: <message>`` on stderr and exit status 2."""
    try:
        yield
    except TangshiError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)


def require_positive_int(name: str, value: object) -> None:
    """One clear error unless ``value`` is an integer >= 1 (booleans are not counts)."""
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise TangshiError(f"{name} must be a positive integer, got {value!r}")
