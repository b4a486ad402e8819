"""Constructor keywords: each server class declares the options it takes, with a check.

socketserver is configured through class attributes (``timeout``, ``request_queue_size``
...). trioserve keeps them, as defaults, and also takes each one as a constructor keyword,
checked here so that a wrong value fails at construction with a message that names it::

    TCPServer(("127.0.0.1", 0), Handler, max_connections=100, timeout=5)

A class declares its options in ``_trioserve_options``, a mapping from name to a check; the options
of a class are those of every class in its MRO, so mix-ins add theirs whatever the order
of the bases.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

__all__ = [
    "Check",
    "boolean",
    "collect_options",
    "file_mode_or_none",
    "positive_int",
    "positive_int_or_none",
    "seconds_or_none",
]

#: A check takes the option's name and value and returns the value to store, or raises.
Check = Callable[[str, Any], Any]


def boolean(name: str, value: Any) -> bool:
    if not isinstance(value, (bool, int)):
        raise TypeError(f"{name} must be a bool, not {type(value).__name__}")
    return bool(value)


def positive_int(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, not {type(value).__name__}")
    if value < 1:
        raise ValueError(f"{name} must be at least 1, not {value}")
    return value


def positive_int_or_none(name: str, value: Any) -> int | None:
    return None if value is None else positive_int(name, value)


def seconds_or_none(name: str, value: Any) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a number of seconds or None, not {type(value).__name__}")
    if math.isnan(value) or value < 0:
        raise ValueError(f"{name} must be >= 0 seconds, not {value}")
    return float(value)


def file_mode_or_none(name: str, value: Any) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 0o7777:
        raise ValueError(f"{name} must be a file mode such as 0o660, not {value!r}")
    return value


def collect_options(cls: type) -> Mapping[str, Check]:
    """The options *cls* takes: those declared by every class in its MRO."""
    options: dict[str, Check] = {}
    for klass in reversed(cls.__mro__):
        options.update(klass.__dict__.get("_trioserve_options", {}))
    return options
