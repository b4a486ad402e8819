"""The socket a sync handler's thread gets: blocking for the handler, non-blocking for Trio."""

from __future__ import annotations

import array
import os
import re
import select
import socket
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import trio

from trioserve._threads import ThreadSocket

pytestmark = pytest.mark.usefixtures("fd_leak_check")


@pytest.fixture
def pair() -> Iterator[tuple[trio.socket.SocketType, socket.socket]]:
    """A connection's Trio socket, and a plain blocking socket for its peer."""
    left, right = socket.socketpair()
    trio_sock = trio.socket.from_stdlib_socket(left)
    with trio_sock, right:
        yield trio_sock, right


Lend = Callable[..., ThreadSocket]


@pytest.fixture
def lend(pair: tuple[trio.socket.SocketType, socket.socket]) -> Iterator[Lend]:
    """``ThreadSocket.lend`` on the pair's Trio socket; each one is released at teardown,
    as the server does when the handler returns, even if the test fails before it does."""
    lent: list[ThreadSocket] = []

    def make(**options: Any) -> ThreadSocket:
        sock = ThreadSocket.lend(pair[0], **options)
        lent.append(sock)
        return sock

    yield make
    for sock in lent:
        sock.release()


class Waits(list[int]):
    """The poll(2) events each `ThreadSocket` call waited for, in order; `started` is set
    as the first wait starts."""

    def __init__(self) -> None:
        super().__init__()
        self.started = threading.Event()


@pytest.fixture
def waits(monkeypatch: pytest.MonkeyPatch) -> Waits:
    """The poll(2) events each `ThreadSocket` call waited for (`Waits`)."""
    seen = Waits()
    wait = ThreadSocket._wait

    def counted(self: ThreadSocket, events: int, deadline: float | None) -> None:
        seen.append(events)
        seen.started.set()
        wait(self, events, deadline)

    monkeypatch.setattr(ThreadSocket, "_wait", counted)
    return seen


def _later(action: Any, waiting: threading.Event | None) -> threading.Thread:
    """Run *action* in a thread, as a peer that takes its time: once *waiting* is set (the
    test's thread waits in poll(2)), or after a short pause when there is nothing to see."""

    def run() -> None:
        if waiting is None:
            time.sleep(0.05)
        else:
            waiting.wait(10)  # and sends anyway: the test's assertions say what went wrong
        action()

    thread = threading.Thread(target=run)
    thread.start()
    return thread


def test_a_call_that_can_be_made_at_once_does_not_wait(
    pair: tuple[trio.socket.SocketType, socket.socket], lend: Lend, waits: Waits
) -> None:
    peer = pair[1]
    sock = lend(timeout=60.0)
    peer.sendall(b"request")
    assert sock.recv(100) == b"request"
    sock.sendall(b"answer")
    assert sock.send(b"!") == 1
    assert peer.recv(100) == b"answer!"
    assert waits == []  # no poll before a call, as CPython makes with a timeout
    sock.release()


@pytest.mark.parametrize("timeout", [None, 60.0])
def test_a_blocking_call_waits_for_the_peer_and_trio_gets_a_non_blocking_descriptor_back(
    pair: tuple[trio.socket.SocketType, socket.socket],
    lend: Lend,
    waits: Waits,
    timeout: float | None,
) -> None:
    trio_sock, peer = pair
    sock = lend(timeout=timeout)
    assert sock.gettimeout() == timeout
    assert sock.getblocking() is True
    # Without a timeout the descriptor is blocking while the thread has it (the call
    # itself waits, as in socketserver); with one, it stays non-blocking and poll waits.
    assert os.get_blocking(trio_sock.fileno()) is (timeout is None)
    # A blocking recv makes no poll to see, and what is asserted holds either way.
    sender = _later(lambda: peer.sendall(b"late"), None if timeout is None else waits.started)
    assert sock.recv(100) == b"late"
    sender.join()
    assert waits == ([] if timeout is None else [select.POLLIN])
    sock.settimeout(5.0)  # a timeout set by the handler: non-blocking again
    assert os.get_blocking(trio_sock.fileno()) is False
    sock.settimeout(None)
    sock.release()
    assert os.get_blocking(trio_sock.fileno()) is False  # Trio's again


def test_a_shared_socket_never_makes_the_descriptor_blocking(
    pair: tuple[trio.socket.SocketType, socket.socket], lend: Lend, waits: Waits
) -> None:
    trio_sock, peer = pair
    sock = lend(timeout=None, shared=True)
    sock.setblocking(True)
    assert os.get_blocking(trio_sock.fileno()) is False
    sender = _later(lambda: peer.sendall(b"late"), waits.started)
    assert sock.recv(100) == b"late"
    sender.join()
    assert waits == [select.POLLIN]
    sock.release()


def test_a_timeout_raises_timeout_error_and_zero_raises_blocking_io_error(
    lend: Lend,
) -> None:
    sock = lend(timeout=0.05)
    started = time.monotonic()
    with pytest.raises(TimeoutError, match="timed out") as raised:
        sock.recv(100)
    assert 0.04 <= time.monotonic() - started < 5
    assert raised.value.__context__ is None  # not "during handling of" the EAGAIN
    sock.settimeout(0.0)
    assert sock.getblocking() is False
    with pytest.raises(BlockingIOError):
        sock.recv(100)
    sock.setblocking(True)
    assert sock.gettimeout() is None
    assert sock.timeout is None
    sock.release()


def test_settimeout_refuses_what_socket_refuses(
    lend: Lend,
) -> None:
    sock = lend(timeout=None)
    plain = socket.socket()
    with plain:
        for bad in ("1", -1, -0.5, float("nan")):
            with pytest.raises((TypeError, ValueError)) as expected:
                plain.settimeout(bad)  # type: ignore[arg-type]
            with pytest.raises(type(expected.value), match=re.escape(str(expected.value))):
                sock.settimeout(bad)  # type: ignore[arg-type]
    sock.settimeout(3)
    assert sock.gettimeout() == 3.0
    assert isinstance(sock.gettimeout(), float)  # as CPython's: an int is made a float
    sock.release()


def test_sendall_sends_more_than_the_kernel_takes_at_once_in_order(
    pair: tuple[trio.socket.SocketType, socket.socket], lend: Lend, waits: Waits
) -> None:
    peer = pair[1]
    sock = lend(timeout=10.0)
    payload = array.array("i", range(1_000_000))  # 4 MB, not bytes: sent as its octets
    received = bytearray()

    def read_all() -> None:
        # Only once sendall waits for room: a reader that kept up could leave it none to
        # wait for. 4 MB is more than a socket pair's buffers hold, so it always does.
        waits.started.wait(10)
        while len(received) < payload.itemsize * len(payload):
            chunk = peer.recv(1 << 16)
            if not chunk:
                return
            received.extend(chunk)

    reader = threading.Thread(target=read_all)
    reader.start()
    sock.sendall(payload)
    reader.join(10)
    assert bytes(received) == payload.tobytes()
    assert waits  # it waited for room
    assert set(waits) == {select.POLLOUT}
    sock.release()


def test_sendall_to_a_peer_that_never_reads_times_out(
    lend: Lend,
) -> None:
    sock = lend(timeout=0.1)
    with pytest.raises(TimeoutError, match="timed out"):
        sock.sendall(b"x" * (16 << 20))
    sock.release()


def test_closing_it_leaves_the_connection_open_and_dup_owns_its_own(
    pair: tuple[trio.socket.SocketType, socket.socket],
    lend: Lend,
) -> None:
    trio_sock, peer = pair
    sock = lend(timeout=5.0)
    assert sock.fileno() == trio_sock.fileno()  # the connection's own descriptor
    copy = sock.dup()
    assert copy.fileno() != sock.fileno()
    assert copy.gettimeout() == 5.0
    reader = sock.makefile("rb")
    sock.close()
    peer.sendall(b"line\n")
    assert reader.readline() == b"line\n"  # the file still holds it
    reader.close()
    assert sock.fileno() == -1
    os.fstat(trio_sock.fileno())  # still open, for the Trio side to close
    copy.sendall(b"from the copy")
    assert peer.recv(100) == b"from the copy"
    copy.close()  # closes its own descriptor only
    os.fstat(trio_sock.fileno())
    sock.release()  # after close(): nothing left to let go of


@pytest.mark.parametrize("closed_by", ["release", "handler"])
def test_an_adopted_descriptor_is_closed_by_the_thread(
    pair: tuple[trio.socket.SocketType, socket.socket], lend: Lend, closed_by: str
) -> None:
    trio_sock, _peer = pair
    sock = lend()
    assert sock.adopt() is True
    assert sock.adopt() is False  # once
    fd = trio_sock.detach()  # what the Trio side does when adopt() says True
    if closed_by == "handler":
        sock.close()
    sock.release()
    with pytest.raises(OSError, match="Bad file descriptor"):
        os.fstat(fd)


def test_one_collected_without_release_warns_and_leaves_the_descriptor_open(
    pair: tuple[trio.socket.SocketType, socket.socket],
) -> None:
    trio_sock, peer = pair
    sock = ThreadSocket.lend(trio_sock, timeout=5.0)
    with pytest.warns(ResourceWarning, match="unreleased"):
        del sock  # its last reference: CPython collects it here
    # Not closed under the Trio side: the connection still works.
    peer.sendall(b"still open")
    os.set_blocking(trio_sock.fileno(), True)
    assert os.read(trio_sock.fileno(), 100) == b"still open"
    os.set_blocking(trio_sock.fileno(), False)
