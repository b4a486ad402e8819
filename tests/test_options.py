"""Server options: constructor keywords over class attributes, each checked with a clear error."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

import trioserve
from trioserve import (
    EchoHandler,
    ForkingTCPServer,
    TCPServer,
    ThreadingTCPServer,
    UnixStreamServer,
)

pytestmark = pytest.mark.usefixtures("fd_leak_check")

LOCALHOST = ("127.0.0.1", 0)


# -- constructor keywords --------------------------------------------------------------------


def test_options_override_class_attributes_for_one_server() -> None:
    with TCPServer(("127.0.0.1", 0), EchoHandler, timeout=2.5, request_queue_size=10) as server:
        assert server.timeout == 2.5
        assert server.request_queue_size == 10
    with TCPServer(("127.0.0.1", 0), EchoHandler) as other:
        assert other.timeout is None
        assert other.request_queue_size == 4096


@pytest.mark.parametrize(
    ("options", "error", "message"),
    [
        ({"no_such_option": 1}, TypeError, "unexpected option 'no_such_option'"),
        ({"timeout": "5"}, TypeError, "timeout must be a number of seconds"),
        ({"timeout": -1}, ValueError, "timeout must be >= 0"),
        ({"max_connections": 0}, ValueError, "max_connections must be at least 1"),
        ({"max_connections": 2.5}, TypeError, "max_connections must be an int"),
        ({"allow_reuse_address": "yes"}, TypeError, "allow_reuse_address must be a bool"),
        ({"unix_socket_mode": 0o10000}, ValueError, "unix_socket_mode must be a file mode"),
    ],
)
def test_bad_options_fail_at_construction_naming_the_option(
    options: dict[str, Any], error: type[Exception], message: str
) -> None:
    with pytest.raises(error, match=message):
        TCPServer(("127.0.0.1", 0), EchoHandler, **options)


def test_max_handler_threads_is_checked() -> None:
    with pytest.raises(ValueError, match="max_handler_threads"):
        ThreadingTCPServer(LOCALHOST, EchoHandler, bind_and_activate=False, max_handler_threads=0)
    with ThreadingTCPServer(
        LOCALHOST, EchoHandler, bind_and_activate=False, max_handler_threads=None
    ) as server:
        assert server.max_handler_threads is None
    assert trioserve.BaseServer.max_handler_threads is None  # follows max_connections


@pytest.mark.parametrize(("value", "error"), [(0, ValueError), ("2", TypeError)])
def test_max_children_is_checked(value: object, error: type[Exception]) -> None:
    with pytest.raises(error, match="max_children"):
        ForkingTCPServer(("127.0.0.1", 0), EchoHandler, max_children=value)


@pytest.mark.parametrize("mode", [-1, 0o10000, "0o600", 6.0])
def test_bad_unix_socket_mode_is_refused(tmp_path: Path, mode: object) -> None:
    with pytest.raises(ValueError, match="unix_socket_mode must be a file mode"):
        UnixStreamServer(str(tmp_path / "s.sock"), EchoHandler, unix_socket_mode=mode)
    assert not (tmp_path / "s.sock").exists()


def test_max_buffered_input_is_an_option_checked_at_construction() -> None:
    from trioserve import TCPServer, ThreadingTCPServer

    with ThreadingTCPServer(("127.0.0.1", 0), trioserve.EchoHandler) as server:
        assert server.max_buffered_input == 32 * 1024 * 1024
    with ThreadingTCPServer(
        ("127.0.0.1", 0), trioserve.EchoHandler, max_buffered_input=None
    ) as unlimited:
        assert unlimited.max_buffered_input is None
    with pytest.raises(ValueError, match="max_buffered_input must be at least 1"):
        TCPServer(("127.0.0.1", 0), trioserve.EchoHandler, max_buffered_input=0)
