from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from typing import ClassVar

import pytest
import trio

from .helpers import HoldHandler


def open_fds() -> set[int]:
    """The file descriptors this process has open now."""
    return {int(name) for name in os.listdir("/proc/self/fd")}


@pytest.fixture
def fd_leak_check() -> Iterator[None]:
    """Fail the test if it leaves file descriptors open that it did not start with."""
    before = open_fds()
    yield
    # The fd of the /proc listing itself comes and goes; anything else new is a leak.
    leaked = {fd for fd in open_fds() - before if os.path.exists(f"/proc/self/fd/{fd}")}
    assert not leaked, f"leaked file descriptors: {sorted(leaked)}"


def _has_ipv6() -> bool:
    if not socket.has_ipv6:
        return False
    try:
        with socket.socket(socket.AF_INET6) as sock:
            sock.bind(("::1", 0))
    except OSError:
        return False
    return True


HAS_IPV6 = _has_ipv6()
needs_ipv6 = pytest.mark.skipif(not HAS_IPV6, reason="no IPv6 loopback here")


@pytest.fixture
def hold_handler() -> type[HoldHandler]:
    """A `HoldHandler` subclass with a fresh ``started`` event and ``cancelled`` record."""

    class Handler(HoldHandler):
        started = trio.Event()
        cancelled: ClassVar[list[str]] = []

    return Handler
