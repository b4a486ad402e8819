"""Opening and adopting server sockets: address errors, Unix socket files, reuse, activation."""

from __future__ import annotations

import errno
import os
import socket
import stat
from pathlib import Path

import pytest
import trio
import trio.testing

from trioserve import (
    EchoHandler,
    TCPServer,
    ThreadingTCPServer,
    ThreadingUnixStreamServer,
    UnixStreamServer,
)
from trioserve.testing import serving

from .helpers import (
    UpperHandler,
    roundtrip,
)

LOCALHOST = ("127.0.0.1", 0)

pytestmark = pytest.mark.usefixtures("fd_leak_check")

# -- helpers ---------------------------------------------------------------------------------


def free_port_holder() -> socket.socket:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen()
    return sock


# -- address errors --------------------------------------------------------------------------


def test_unknown_host_is_a_gaierror_naming_the_address() -> None:
    with pytest.raises(socket.gaierror, match=r"cannot bind to \('no-such-host\.invalid', 0\)"):
        TCPServer(("no-such-host.invalid", 0), EchoHandler)


@pytest.mark.parametrize("port", [-1, 65536, 10**9])
def test_port_out_of_range_is_a_value_error_naming_the_address(port: int) -> None:
    with pytest.raises(
        ValueError, match=rf"the port in \('127\.0\.0\.1', {port}\) is out of range"
    ):
        TCPServer(("127.0.0.1", port), EchoHandler)


@pytest.mark.parametrize(
    "address",
    [("127.0.0.1", "80"), ("127.0.0.1", True), (b"127.0.0.1", 80), "127.0.0.1:80", ("x",)],
)
def test_malformed_address_is_a_type_error_naming_it(address: object) -> None:
    with pytest.raises(TypeError, match=r"127|x"):
        TCPServer(address, EchoHandler)


def test_port_in_use_is_eaddrinuse_naming_the_address() -> None:
    with free_port_holder() as holder:
        address = holder.getsockname()
        with pytest.raises(
            OSError, match=rf"cannot bind to \('127\.0\.0\.1', {address[1]}\)"
        ) as info:
            TCPServer(address, EchoHandler)
    assert info.value.errno == errno.EADDRINUSE


def test_unix_path_in_a_missing_directory_names_the_path(tmp_path: Path) -> None:
    path = str(tmp_path / "no" / "such" / "dir" / "s.sock")
    with pytest.raises(FileNotFoundError, match=f"cannot bind to '{path}'") as info:
        UnixStreamServer(path, EchoHandler)
    assert info.value.errno == errno.ENOENT


def test_unix_path_too_long_names_the_path(tmp_path: Path) -> None:
    path = str(tmp_path / ("x" * 200))
    with pytest.raises(OSError, match=r"cannot bind to .*xxxx'.*too long"):
        UnixStreamServer(path, EchoHandler)


def test_empty_unix_path_is_refused() -> None:
    with pytest.raises(ValueError, match="must not be empty"):
        UnixStreamServer("", EchoHandler)


# -- Unix socket files -----------------------------------------------------------------------


async def test_stale_socket_file_is_removed_and_the_server_binds(tmp_path: Path) -> None:
    path = str(tmp_path / "stale.sock")
    dead = socket.socket(socket.AF_UNIX)
    dead.bind(path)
    dead.close()  # a server that crashed: its file stays
    assert stat.S_ISSOCK(os.stat(path).st_mode)
    with ThreadingUnixStreamServer(path, EchoHandler) as server:
        async with serving(server):
            assert await roundtrip(server, b"ping") == b"ping"


async def test_live_socket_file_is_left_alone(tmp_path: Path) -> None:
    path = str(tmp_path / "live.sock")
    with ThreadingUnixStreamServer(path, EchoHandler) as first:
        with pytest.raises(OSError, match=f"cannot bind to '{path}'") as info:
            UnixStreamServer(path, EchoHandler)
        assert info.value.errno == errno.EADDRINUSE
        async with serving(first):
            assert (
                await roundtrip(first, b"ping") == b"ping"
            )  # still reachable: its file is intact


async def test_live_server_with_a_full_backlog_is_not_mistaken_for_stale(
    tmp_path: Path,
) -> None:
    path = str(tmp_path / "busy.sock")
    with socket.socket(socket.AF_UNIX) as busy:
        busy.bind(path)
        busy.listen(0)
        waiting: list[socket.socket] = []
        try:
            for _ in range(64):  # bounded: the backlog of 0 fills after a connection or two
                client = socket.socket(socket.AF_UNIX)
                client.setblocking(False)
                waiting.append(client)
                try:
                    client.connect(path)
                except BlockingIOError:
                    break
            else:
                pytest.fail("the backlog never filled")
            with trio.fail_after(10):  # a blocking probe would hang here forever
                with pytest.raises(OSError, match="cannot bind") as info:
                    await trio.to_thread.run_sync(
                        UnixStreamServer, path, EchoHandler, abandon_on_cancel=True
                    )
            assert info.value.errno == errno.EADDRINUSE
            assert stat.S_ISSOCK(os.stat(path).st_mode)
        finally:
            for client in waiting:
                client.close()


def test_a_file_that_is_not_a_socket_is_never_removed(tmp_path: Path) -> None:
    path = tmp_path / "data.txt"
    path.write_text("precious")
    with pytest.raises(OSError, match="cannot bind") as info:
        UnixStreamServer(str(path), EchoHandler)
    assert info.value.errno == errno.EADDRINUSE
    assert path.read_text() == "precious"


@pytest.mark.parametrize("mode", [0o600, 0o660, 0o666])
def test_unix_socket_mode_sets_the_file_mode(tmp_path: Path, mode: int) -> None:
    path = str(tmp_path / "mode.sock")
    with UnixStreamServer(path, EchoHandler, unix_socket_mode=mode):
        assert stat.S_IMODE(os.stat(path).st_mode) == mode


async def test_server_removes_its_own_file_on_close(tmp_path: Path) -> None:
    path = tmp_path / "own.sock"
    with ThreadingUnixStreamServer(str(path), EchoHandler) as server:
        async with serving(server):
            assert await roundtrip(server, b"ping") == b"ping"
        assert path.exists()
    assert not path.exists()
    server.server_close()  # closing twice is harmless


def test_server_leaves_a_file_that_is_no_longer_its_own(tmp_path: Path) -> None:
    path = str(tmp_path / "moved.sock")
    first = UnixStreamServer(path, EchoHandler)
    os.unlink(path)  # someone removed it, and a second server took the path
    with UnixStreamServer(path, EchoHandler):
        first.server_close()
        assert stat.S_ISSOCK(os.stat(path).st_mode)  # the second server's file is intact
    assert not os.path.exists(path)


def test_abstract_unix_socket_has_no_file() -> None:
    name = f"\0trioserve-test-{os.getpid()}"
    with UnixStreamServer(name, EchoHandler) as server:
        assert server.server_address == name.encode()  # as the kernel reports it


# -- allow_reuse_port ------------------------------------------------------------------------


async def test_allow_reuse_port_lets_two_servers_share_a_port() -> None:
    with ThreadingTCPServer(("127.0.0.1", 0), EchoHandler, allow_reuse_port=True) as first:
        port = first.server_address[1]
        with pytest.raises(OSError, match="cannot bind") as info:
            TCPServer(("127.0.0.1", port), EchoHandler)  # without the option: refused
        assert info.value.errno == errno.EADDRINUSE
        with ThreadingTCPServer(("127.0.0.1", port), EchoHandler, allow_reuse_port=True) as second:
            assert second.server_address == first.server_address
            assert second.socket.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT) == 1
            # One leak check, the outer one, for both: when the inner block ends, the
            # other server may still be closing a connection the kernel gave it.
            async with serving(first), serving(second, check_leaks=False):
                for index in range(4):
                    assert await roundtrip(second, b"%d" % index) == b"%d" % index
            first.server_close()
            # The kernel now sends every connection to the server still listening.
            async with serving(second):
                assert await roundtrip(second, b"ping") == b"ping"


# -- adopting sockets: from_socket, from_fd ---------------------------------------------------


async def test_from_socket_takes_the_family_of_the_socket(tmp_path: Path) -> None:
    path = str(tmp_path / "adopted.sock")
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(path)
    # A TCPServer class, a Unix socket: the socket decides.
    with ThreadingTCPServer.from_socket(sock, EchoHandler) as server:
        assert server.address_family == socket.AF_UNIX
        assert server.server_address == path
        async with serving(server):
            assert await roundtrip(server, b"ping") == b"ping"
    assert stat.S_ISSOCK(os.stat(path).st_mode)  # the file belongs to whoever bound it


def test_from_socket_runs_the_subclass_init() -> None:
    class Server(TCPServer):
        def __init__(self, *args: object, **kwargs: object) -> None:
            super().__init__(*args, **kwargs)  # type: ignore[arg-type]
            self.initialised = True

    with free_port_holder() as sock:
        sock_fd = sock.fileno()
        with Server.from_socket(sock, EchoHandler, max_connections=5) as server:
            assert server.initialised
            assert server.fileno() == sock_fd
            assert server.max_connections == 5


def test_from_socket_with_a_bad_option_leaves_the_socket_to_the_caller() -> None:
    with free_port_holder() as sock:
        with pytest.raises(TypeError, match="unexpected option 'colour'"):
            TCPServer.from_socket(sock, EchoHandler, colour="blue")
        assert sock.fileno() >= 0
        assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN)


async def test_from_fd_serves_on_an_inherited_descriptor() -> None:
    sock = free_port_holder()
    fd = sock.detach()
    os.set_inheritable(fd, True)
    with ThreadingTCPServer.from_fd(fd, EchoHandler) as server:
        assert server.fileno() == fd
        assert not os.get_inheritable(fd)
        async with serving(server):
            assert await roundtrip(server, b"ping") == b"ping"
    with pytest.raises(OSError, match="Bad file descriptor"):
        os.fstat(fd)  # closed with the server


def test_from_fd_refuses_what_it_cannot_serve() -> None:
    read_end, write_end = os.pipe()
    try:
        with pytest.raises(ValueError, match=f"file descriptor {read_end} is not a socket"):
            TCPServer.from_fd(read_end, EchoHandler)
        os.fstat(read_end)  # still open: still the caller's
    finally:
        os.close(read_end)
        os.close(write_end)
    with socket.socket(type=socket.SOCK_DGRAM) as udp:
        udp.bind(("127.0.0.1", 0))
        with pytest.raises(ValueError, match="needs a socket of type"):
            TCPServer.from_fd(udp.fileno(), EchoHandler)
        assert udp.fileno() >= 0
    with socket.socket() as unbound, pytest.raises(ValueError, match="needs a bound socket"):
        TCPServer.from_fd(unbound.fileno(), EchoHandler)
    closed_fd = os.open(os.devnull, os.O_RDONLY)
    os.close(closed_fd)
    with pytest.raises(OSError, match=f"file descriptor {closed_fd}") as info:
        TCPServer.from_fd(closed_fd, EchoHandler)
    assert info.value.errno == errno.EBADF


# -- bind_and_activate=False; from_socket on a listening or a bound socket ------------


def test_bind_and_activate_false_lets_the_caller_set_options_first() -> None:
    server = TCPServer(("127.0.0.1", 0), EchoHandler, bind_and_activate=False)
    with server:
        server.socket.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        server.server_bind()
        server.server_activate()
        assert server.server_address[1] != 0
        assert server.socket.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE)


async def test_from_socket_serves_on_an_already_listening_socket() -> None:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen()
    with ThreadingTCPServer.from_socket(sock, UpperHandler) as server:
        assert server.server_address == sock.getsockname()
        assert server.fileno() == sock.fileno()
        async with serving(server):
            assert await roundtrip(server, b"adopted\n") == b"ADOPTED\n"
    assert sock.fileno() == -1  # the server owned it and closed it


async def test_from_socket_activates_a_bound_socket_and_rejects_wrong_ones() -> None:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    with TCPServer.from_socket(sock, UpperHandler) as server:
        assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN)
        assert server.server_address == sock.getsockname()
    with socket.socket(type=socket.SOCK_DGRAM) as udp, pytest.raises(ValueError, match="type"):
        TCPServer.from_socket(udp, UpperHandler)
    with socket.socket() as unbound, pytest.raises(ValueError, match="bound socket"):
        TCPServer.from_socket(unbound, UpperHandler)
