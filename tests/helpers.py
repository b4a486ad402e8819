"""Client-side helpers the tests share."""

from __future__ import annotations

from typing import ClassVar

import trio

from trioserve import StreamRequestHandler


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
