"""`server.socket` (`trioserve._serversocket.ServerSocket`): Trio's inside a run, else blocking."""

from __future__ import annotations

import os
import socket
import threading

import pytest
import trio

from trioserve import EchoHandler, TCPServer, UDPServer
from trioserve._serversocket import ServerSocket

pytestmark = pytest.mark.usefixtures("fd_leak_check")


def test_outside_trio_it_is_a_blocking_socket_as_socketserver_code_expects() -> None:
    with TCPServer(("127.0.0.1", 0), EchoHandler) as server:
        sock = server.socket
        assert isinstance(sock, ServerSocket)
        assert isinstance(sock, trio.socket.SocketType)
        assert sock.family == socket.AF_INET
        assert sock.type == socket.SOCK_STREAM
        assert sock.proto in (0, socket.IPPROTO_TCP)
        assert sock.getsockname() == server.server_address
        assert sock.fileno() == server.fileno() >= 0
        assert "trioserve.ServerSocket" in repr(sock)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE)
        assert len(sock.getsockopt(socket.SOL_SOCKET, socket.SO_LINGER, 8)) == 8
        assert sock.gettimeout() is None
        with socket.create_connection(server.server_address, timeout=30) as client:
            connection, address = sock.accept()
            with connection:
                assert type(connection) is socket.socket
                assert connection.gettimeout() is None  # blocking, as socketserver's
                assert address == client.getsockname()
                client.sendall(b"x")
                assert connection.recv(1) == b"x"
        # The descriptor itself stays non-blocking: the server's Trio run waits on it.
        assert os.get_blocking(sock.fileno()) is False


def test_a_blocking_accept_honours_settimeout_and_setblocking() -> None:
    with TCPServer(("127.0.0.1", 0), EchoHandler) as server:
        sock = server.socket
        assert isinstance(sock, ServerSocket)
        sock.settimeout(0.05)
        assert sock.gettimeout() == 0.05
        with pytest.raises(TimeoutError):
            sock.accept()
        sock.setblocking(False)
        with pytest.raises(BlockingIOError):
            sock.accept()
        sock.setblocking(True)
        assert sock.gettimeout() is None
        with pytest.raises(ValueError, match="out of range"):
            sock.settimeout(-1)


def test_outside_trio_datagrams_are_sent_and_received_blocking() -> None:
    with (
        UDPServer(("127.0.0.1", 0), EchoHandler) as server,
        socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as client,
    ):
        sock = server.socket
        assert isinstance(sock, ServerSocket)
        client.bind(("127.0.0.1", 0))
        client.sendto(b"ping", server.server_address)
        data, address = sock.recvfrom(100)
        assert (data, address) == (b"ping", client.getsockname())
        assert sock.sendto(b"pong", address) == 4
        assert client.recv(100) == b"pong"
        client.sendto(b"into", server.server_address)
        buffer = bytearray(10)
        assert sock.recvfrom_into(buffer)[0] == 4
        assert bytes(buffer[:4]) == b"into"


def test_close_works_from_any_thread_outside_a_run() -> None:
    server = TCPServer(("127.0.0.1", 0), EchoHandler)
    closer = threading.Thread(target=server.socket.close)
    closer.start()
    closer.join(timeout=30)
    assert server.socket.fileno() == -1
    server.server_close()


async def test_inside_trio_its_methods_are_trios() -> None:
    with TCPServer(("127.0.0.1", 0), EchoHandler) as server:
        sock = server.socket
        async with await trio.open_tcp_stream(*server.server_address) as client:
            connection, address = await sock.accept()
            with connection:
                assert isinstance(connection, trio.socket.SocketType)
                assert address == client.socket.getsockname()
                await client.send_all(b"y")
                assert await connection.recv(1) == b"y"
        assert sock.is_readable() is False
        assert not sock.did_shutdown_SHUT_WR
    assert server.socket.fileno() == -1  # closed inside the run, waking any waiter


async def test_inside_trio_datagrams_are_trios() -> None:
    with UDPServer(("127.0.0.1", 0), EchoHandler) as server:
        sock = server.socket
        with trio.socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as client:
            await client.bind(("127.0.0.1", 0))
            await client.sendto(b"a", server.server_address)
            data, address = await sock.recvfrom(10)
            assert data == b"a"
            await sock.sendto(b"b", address)
            assert await client.recv(10) == b"b"


def test_the_rest_of_a_sockets_methods_outside_trio() -> None:
    with (
        UDPServer(("127.0.0.1", 0), EchoHandler) as server,
        socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as client,
    ):
        sock = server.socket
        assert isinstance(sock, ServerSocket)
        assert sock.get_inheritable() is False
        sock.set_inheritable(False)
        client.connect(server.server_address)
        client.send(b"one")
        assert sock.recv(10) == b"one"
        client.send(b"two")
        buffer = bytearray(10)
        assert sock.recv_into(buffer) == 3
        assert bytes(buffer[:3]) == b"two"
        other = sock.dup()
        with other:
            assert other.fileno() != sock.fileno()
        with pytest.raises(OSError, match="not connected"):
            sock.getpeername()


def test_binding_and_listening_outside_trio_then_detaching() -> None:
    server = TCPServer(("127.0.0.1", 0), EchoHandler, bind_and_activate=False)
    sock = server.socket
    assert isinstance(sock, ServerSocket)
    assert sock.bind(("127.0.0.1", 0)) is None
    sock.listen(5)
    with socket.create_connection(sock.getsockname(), timeout=30) as client:
        connection, _ = sock.accept()
        with connection:
            client.sendall(b"z")
            assert connection.recv(1) == b"z"
            sock_peer = connection.getpeername()
            assert sock_peer == client.getsockname()
    fd = sock.detach()
    assert fd >= 0
    socket.socket(fileno=fd).close()
    server.server_close()


async def test_inside_trio_bind_connect_and_send_are_trios() -> None:
    with UDPServer(("127.0.0.1", 0), EchoHandler) as server:
        sock = server.socket
        with trio.socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as client:
            await client.bind(("127.0.0.1", 0))
            await sock.connect(client.getsockname())
            await sock.wait_writable()
            assert await sock.send(b"hi") == 2
            assert await client.recv(10) == b"hi"
            sock.shutdown(socket.SHUT_RDWR)
