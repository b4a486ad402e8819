"""Socket I/O on the hot paths, with Trio's cancellation and fewer yields.

Every successful operation on a `trio.SocketStream` or a `trio.socket` socket is a full
Trio checkpoint: it checks for cancellation and then always yields to the scheduler, even
when the system call completed at once. On the request/response paths of a server that
second yield is pure cost: after a handler sends its answer, its next read finds nothing
and waits (a yield of its own) anyway; a datagram server's receive loop yields once per
datagram where a queue of them is waiting.

The classes here make the same system calls on the same sockets under a cheaper rule
(the pacing rule):

* every operation first checks for cancellation (`trio.lowlevel.checkpoint_if_cancelled`),
  so a cancelled task stops at its next read or write, as with Trio's own sockets;
* an operation that has to wait for the peer waits in `trio.lowlevel.wait_readable` or
  `trio.lowlevel.wait_writable`, which yields to other tasks;
* an operation that completes at once yields only every `YIELD_EVERY`-th time in a row,
  so a task that never has to wait (a peer that pipelines its requests, a fast reader of
  a stream of writes, a flood of datagrams) still lets every other task run.

One `DirectSocket` serves both files of a connection (``rfile`` and ``wfile``), so the
count of operations in a row is the connection's, and a receive knows what was sent
since the last one. That gives a request/response connection a cheaper turn:

* a receive that comes after an answer was sent, when the receive before that found the
  socket drained (it got less than it asked for), does not try the socket at once: the
  peer had nothing more to send when the request was read, and now has to read the
  answer before it sends the next request, so a receive at once would fail with EAGAIN
  (a system call and an exception, about 2 µs in Python) and wait anyway. It *lets the
  other tasks run first* (a full checkpoint, `trio.lowlevel.checkpoint`), then receives.
  On a busy server the peer has answered by then, and the request is read without a
  wait for the socket: no epoll registration to re-arm, no wake-up through Trio's I/O
  manager, which cost more than the turn (`docs/performance.md`, round 3). If the turn
  was not enough (the peer was slower than the other tasks, as on an idle server), the
  receive waits for the socket as any other; and the next few reads after an answer wait
  for the socket *first*, without a turn, for 1, then 3, 7, 15 and at most `TURN_BACKOFF`
  answers after each miss in a row, so a connection to a slow peer spends no more than a
  wasted turn now and then. Bytes that arrived meanwhile (a pipelining peer) are read
  after the turn; nothing is read in another order, and the turn and the wait are both
  checkpoints, so cancellation is checked as before.

The sockets stay owned by the Trio objects they came from: closing those closes them, and
the operations here then raise `trio.ClosedResourceError`.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Callable
from typing import Any, final

import trio
from trio.lowlevel import (
    cancel_shielded_checkpoint,
    checkpoint,
    checkpoint_if_cancelled,
    wait_readable,
    wait_writable,
)

from ._errors import closed, from_socket_error

__all__ = ["TURN_BACKOFF", "YIELD_EVERY", "DirectSocket", "PacedListener", "direct"]

#: Operations in a row that complete without waiting, after which one yields anyway.
YIELD_EVERY = 8
#: After a turn that did not give the peer time to answer, the reads after that many
#: answers at most wait for the socket first (1, 3, 7, 15, then this, misses in a row).
TURN_BACKOFF = 31


@final
class DirectSocket:
    """``receive_some`` and ``send_all`` on a `trio.SocketStream`'s socket, paced.

    Behaves as the stream's own methods do (same errors; `trio.BusyResourceError` for a
    task that sends while another's send waits for room, so bytes never interleave),
    except that an operation that completes at once does not always yield, and a receive
    after an answer lets the other tasks run before it tries the socket (see the module
    documentation). One instance serves a connection's reader and its writer (`direct`
    hands the same one back); the stream stays the socket's owner.
    """

    __slots__ = ("_after_answer", "_backoff", "_drained", "_fileno", "_run", "_sending", "_skip")

    def __init__(self, stream: trio.SocketStream) -> None:
        # The descriptor is asked for before every system call (a socket closed meanwhile
        # says -1, and its number may already be another socket's): from the standard
        # socket the Trio socket wraps when there is one, a C method, rather than through
        # the Trio socket's own Python method, three times per request.
        owner = stream.socket
        self._fileno: Callable[[], int] = getattr(owner, "_sock", owner).fileno
        self._run = 0  # operations in a row that completed without yielding
        self._sending = False
        # The last receive got less than it asked for: the socket held no more then.
        self._drained = False
        # ... and an answer was sent since: the next receive gives the peer time first.
        self._after_answer = False
        # Answers whose next read waits for the socket first, without a turn (after a
        # turn that was not enough), and how many the last miss set (doubled per miss).
        self._skip = 0
        self._backoff = 0

    async def receive_some(self, max_bytes: int) -> bytes:
        """Receive up to *max_bytes* (at least 1); b"" at end of file."""
        turned = False
        if self._after_answer:
            # The peer is reading our answer: give it time (a checkpoint, so cancellation
            # is checked here) rather than try a receive that would fail.
            self._after_answer = False
            self._run = 0
            if self._skip:
                # A recent turn was not enough: wait for the peer's bytes.
                self._skip -= 1
                fd = self._fileno()
                if fd < 0:
                    raise closed()
                await wait_readable(fd)
            else:
                # The other tasks first; on a busy server the peer has answered by then.
                await checkpoint()
                turned = True
        else:
            await checkpoint_if_cancelled()
        while True:
            fd = self._fileno()
            if fd < 0:
                raise closed()
            try:
                data = os.read(fd, max_bytes)
            except BlockingIOError:
                data = None  # wait outside the except block: no context for what follows
            except OSError as exc:
                raise from_socket_error(exc) from exc
            if data is None:
                if turned:  # the turn was not enough: wait first for a while
                    turned = False
                    self._skip = self._backoff = min(self._backoff * 2 + 1, TURN_BACKOFF)
                self._run = 0
                await wait_readable(fd)
                continue
            if turned:
                self._backoff = 0
            self._drained = len(data) < max_bytes
            self._run += 1
            if self._run >= YIELD_EVERY:
                self._run = 0
                await cancel_shielded_checkpoint()
            return data

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        """Send all of *data*, waiting while the peer's side is full."""
        if self._sending:
            raise trio.BusyResourceError("another task is sending on this connection")
        await checkpoint_if_cancelled()
        view = data if type(data) is bytes else memoryview(data).cast("B")
        while True:
            fd = self._fileno()
            if fd < 0:
                raise closed()
            try:
                sent = os.write(fd, view)
            except BlockingIOError:
                sent = 0
            except OSError as exc:
                raise from_socket_error(exc) from exc
            if sent == len(view):
                break
            # A partial send: wait for room, and keep other senders out until done.
            view = memoryview(view)[sent:]
            self._run = 0
            self._sending = True
            try:
                await wait_writable(fd)
            finally:
                self._sending = False
        if self._drained:
            self._after_answer = True
        self._run += 1
        if self._run >= YIELD_EVERY:
            self._run = 0
            await cancel_shielded_checkpoint()


def direct(stream: object) -> DirectSocket | None:
    """A `DirectSocket` for a plain `trio.SocketStream`; None for any other stream.

    Given a `DirectSocket`, returns it: so a connection's reader and writer, made over
    the same one, share it (`trioserve.StreamRequestHandler` does this).
    """
    if type(stream) is trio.SocketStream:
        return DirectSocket(stream)
    if type(stream) is DirectSocket:
        return stream
    return None


@final
class PacedListener:
    """``accept`` and ``recvfrom`` on a server's own socket, paced.

    *sock* is the `socket.socket` that *owner*, a `trio.socket` socket, wraps: the pair
    the server created. Under a burst of connections or a flood of datagrams the server
    takes several that are already waiting before it yields, rather than one per turn of
    the scheduler, while every established connection takes a turn in between. `OSError`
    propagates as the `socket.socket` method raises it.
    """

    __slots__ = ("_run", "_sock", "owner")

    def __init__(self, sock: socket.socket, owner: trio.socket.SocketType) -> None:
        self._sock = sock
        self.owner = owner
        self._run = 0

    async def accept(self) -> tuple[trio.socket.SocketType, Any]:
        """Accept a connection: a `trio.socket` socket for it, and the peer's address."""
        await checkpoint_if_cancelled()
        sock = self._sock
        while True:
            try:
                connection, address = sock.accept()
            except BlockingIOError:
                connection = None  # wait outside the except block: no context for what follows
            if connection is None:
                self._run = 0
                await wait_readable(sock)
                continue
            if self._tick():
                await cancel_shielded_checkpoint()  # shielded: cannot be cancelled
            return trio.socket.from_stdlib_socket(connection), address

    async def recvfrom(self, size: int) -> tuple[bytes, Any]:
        """Receive one datagram of at most *size* bytes, and its sender's address."""
        await checkpoint_if_cancelled()
        sock = self._sock
        while True:
            try:
                result = sock.recvfrom(size)
            except BlockingIOError:
                result = None  # wait outside the except block: no context for what follows
            if result is None:
                self._run = 0
                await wait_readable(sock)
                continue
            if self._tick():
                await cancel_shielded_checkpoint()
            return result

    def _tick(self) -> bool:
        """Count one operation that completed at once; True when it is time to yield."""
        self._run += 1
        if self._run < YIELD_EVERY:
            return False
        self._run = 0
        return True
