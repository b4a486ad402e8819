"""What the tests share beyond `trioserve.testing`: handlers, client-side readers, logs, faults.

`trioserve.testing` serves servers (``serving``, the ``trioserve_`` fixtures) and opens
clients to them (``connect``, ``exchange_datagram``); use it wherever a test has a server
object. What is here covers the rest: reading what a peer or a subprocess sends, in bounded
time; picking the server's log records out of ``caplog``; and faults on the real path (a
TCP reset, errnos from the server's own socket).
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Callable
from typing import Any, ClassVar

import pytest
import trio

from trioserve import SocketServer, StreamRequestHandler
from trioserve.testing import connect

#: A bound for anything a test waits for that should take milliseconds (a busy machine, a
#: process starting up); reaching it fails the test instead of hanging it.
PATIENCE = 30.0


class HoldHandler(StreamRequestHandler):
    """Holds its connection until cancelled; records what happened to it.

    Use the ``hold_handler`` fixture: it gives each test a subclass with its own event and
    record.
    """

    started: ClassVar[trio.Event]
    cancelled: ClassVar[list[str]]

    async def handle(self) -> None:
        type(self).started.set()
        try:
            await trio.sleep_forever()
        except trio.Cancelled:
            type(self).cancelled.append("cancelled")
            raise


class UpperHandler(StreamRequestHandler):
    """Answers each line with the line in upper case."""

    async def handle(self) -> None:
        async for line in self.rfile:
            await self.wfile.write(line.upper())


async def receive_exactly(stream: trio.abc.ReceiveStream, size: int) -> bytes:
    """Receive exactly *size* bytes; fail the test if the peer closes first."""
    data = b""
    while len(data) < size:
        chunk = await stream.receive_some(size - len(data))
        assert chunk, f"EOF after {data!r}"
        data += chunk
    return data


async def receive_until_eof(stream: trio.abc.ReceiveStream) -> bytes:
    """Everything until the server closes (a reset counts as closing)."""
    data = b""
    for _ in range(100_000):  # bounded: each receive returns at least a byte, or EOF
        try:
            chunk = await stream.receive_some()
        except trio.BrokenResourceError:
            return data
        if not chunk:
            return data
        data += chunk
    raise AssertionError("the server kept sending")


async def roundtrip(server: SocketServer, payload: bytes) -> bytes:
    """Connect to *server*, send *payload*, and receive as many bytes back."""
    async with await connect(server) as stream:
        await stream.send_all(payload)
        return await receive_exactly(stream, len(payload))


class LineReader:
    """Lines from a byte stream (a connection, a subprocess's pipe), each bounded in time.

    Bytes after a line stay buffered for the next call, so a peer that sends several lines
    at once loses none of them. Every read fails the test (`trio.TooSlowError`) after
    *patience* seconds.
    """

    def __init__(self, stream: trio.abc.ReceiveStream, *, patience: float = PATIENCE) -> None:
        self.stream = stream
        self.patience = patience
        self.buffer = b""
        #: Every line read so far, for failure messages.
        self.seen: list[bytes] = []

    async def readuntil(self, end: bytes) -> bytes:
        """Up to and including the next *end*; what is left at end of file without it."""
        with trio.fail_after(self.patience):
            while end not in self.buffer:
                chunk = await self.stream.receive_some()
                if not chunk:
                    rest, self.buffer = self.buffer, b""
                    return rest
                self.buffer += chunk
        line, found, self.buffer = self.buffer.partition(end)
        self.seen.append(line + found)
        return line + found

    async def readline(self) -> bytes:
        """The next line, with its newline; b"" at end of file."""
        return await self.readuntil(b"\n")

    async def wait_for(self, text: bytes) -> bytes:
        """Read lines until one contains *text*; return it (fail at end of file)."""
        with trio.fail_after(self.patience):
            while True:
                line = await self.readline()
                if text in line:
                    return line
                assert line, f"no line with {text!r} in {self.seen!r}"

    async def rest(self) -> bytes:
        """Everything up to end of file."""
        data, self.buffer = self.buffer, b""
        with trio.fail_after(self.patience):
            while chunk := await self.stream.receive_some():
                data += chunk
        return data


async def read_line(stream: trio.abc.ReceiveStream, *, patience: float = PATIENCE) -> bytes:
    """One line from *stream*, for a stream that carries one (see `LineReader`)."""
    return await LineReader(stream, patience=patience).readline()


def trioserve_records(
    caplog: pytest.LogCaptureFixture, level: int, *, exactly: bool = False
) -> list[logging.LogRecord]:
    """The records of the ``trioserve`` logger at *level* and above (only at it: *exactly*).

    A record below the level ``caplog`` lets through is not there: ask for it first, with
    ``caplog.set_level(logging.DEBUG, logger="trioserve")``.
    """
    accept: Callable[[int], bool] = (
        (lambda levelno: levelno == level) if exactly else (lambda levelno: levelno >= level)
    )
    return [r for r in caplog.records if r.name == "trioserve" and accept(r.levelno)]


def reset(sock: socket.socket) -> None:
    """Close *sock* with a TCP reset (SO_LINGER with a zero timeout)."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\0\0\0\0\0\0\0")
    sock.close()


def script_socket_errors(
    monkeypatch: pytest.MonkeyPatch, server: SocketServer, method: str, errors: list[int]
) -> None:
    """Make the server's own socket raise *errors* from *method* before it works again.

    For the errnos the kernel will not produce on demand (ECONNABORTED, ENFILE, ENOBUFS,
    ...). *method* is ``"accept"`` or ``"recvfrom"`` of `socket.socket`, patched for the
    length of the test and only for the socket whose descriptor is the server's: the server
    takes its usual path to the kernel, and the errors come out of the very call the
    kernel's would. Each call takes the first errno left in *errors* (the caller's list, so
    a test can see that all were used).
    """
    fd = server.fileno()
    original: Callable[..., Any] = getattr(socket.socket, method)

    def scripted(sock: socket.socket, *args: Any) -> Any:
        if errors and sock.fileno() == fd:
            code = errors.pop(0)
            raise OSError(code, os.strerror(code))
        return original(sock, *args)

    monkeypatch.setattr(socket.socket, method, scripted)
