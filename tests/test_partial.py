"""Handler classes passed through `functools.partial`, as socketserver code does."""

from __future__ import annotations

import contextlib
import functools
import http.server
import logging
import socketserver
import urllib.request
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
import trio

from tests.helpers import receive_exactly
from trioserve import (
    DatagramRequestHandler,
    ForkingTCPServer,
    StreamRequestHandler,
    TCPServer,
    ThreadingHTTPServer,
    ThreadingTCPServer,
    ThreadingUDPServer,
)
from trioserve.testing import connect, exchange_datagram, serving

pytestmark = pytest.mark.usefixtures("fd_leak_check")


@pytest.fixture(autouse=True)
def no_errors_logged(caplog: pytest.LogCaptureFixture) -> Iterator[None]:
    """A handler that answered and then failed (say, after the response) fails the test."""
    caplog.set_level(logging.ERROR, logger="trioserve")
    yield
    records = caplog.get_records("call")
    assert [r.getMessage() for r in records if r.levelno >= logging.ERROR] == []


class Greeter(StreamRequestHandler):
    """Answers each line with its greeting; the greeting is a constructor argument."""

    def __init__(self, *args: Any, greeting: bytes, **kwargs: Any) -> None:
        self.greeting = greeting
        super().__init__(*args, **kwargs)

    async def handle(self) -> None:
        async for line in self.rfile:
            await self.wfile.write(self.greeting + line)


class SyncGreeter(socketserver.StreamRequestHandler):
    """The same, as socketserver's own handler (runs in a thread)."""

    def __init__(self, *args: Any, greeting: bytes, **kwargs: Any) -> None:
        self.greeting = greeting
        super().__init__(*args, **kwargs)

    def handle(self) -> None:
        for line in self.rfile:
            self.wfile.write(self.greeting + line)


class DatagramGreeter(DatagramRequestHandler):
    def __init__(self, *args: Any, greeting: bytes, **kwargs: Any) -> None:
        self.greeting = greeting
        super().__init__(*args, **kwargs)

    async def handle(self) -> None:
        await self.wfile.write(self.greeting + await self.rfile.read())


@contextlib.asynccontextmanager
async def serving_until_drained(server: Any) -> AsyncIterator[None]:
    """Serve for the block; then stop, letting every handler finish (not cancelled)."""
    async with serving(server):
        yield
        # From another thread, shutdown() returns once serve_forever has: all drained.
        await trio.to_thread.run_sync(functools.partial(server.shutdown, grace=None))


async def ask(server: Any, line: bytes, greeting: bytes) -> bytes:
    async with await connect(server) as client:
        await client.send_all(line)
        return await receive_exactly(client, len(greeting) + len(line))


@pytest.mark.parametrize("handler", [Greeter, SyncGreeter])
async def test_a_partial_handler_gets_its_arguments(
    handler: type[Greeter] | type[SyncGreeter],
) -> None:
    partial = functools.partial(handler, greeting=b"hello ")
    with ThreadingTCPServer(("127.0.0.1", 0), partial) as server:
        async with serving_until_drained(server):
            assert await ask(server, b"world\n", b"hello ") == b"hello world\n"


async def test_nested_partials_and_a_plain_server() -> None:
    nested = functools.partial(functools.partial(Greeter, greeting=b"nested"), greeting=b"outer ")
    with TCPServer(("127.0.0.1", 0), nested) as server:
        async with serving_until_drained(server):
            assert await ask(server, b"layer\n", b"outer ") == b"outer layer\n"


async def test_a_partial_datagram_handler() -> None:
    partial = functools.partial(DatagramGreeter, greeting=b"hi ")
    with ThreadingUDPServer(("127.0.0.1", 0), partial) as server:
        async with serving_until_drained(server):
            assert await exchange_datagram(server, b"there") == b"hi there"


async def test_simple_http_handler_serves_the_directory_a_partial_names(tmp_path: Path) -> None:
    (tmp_path / "page.txt").write_text("from the partial's directory")
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(tmp_path))

    class Quiet(ThreadingHTTPServer):
        pass

    with Quiet(("127.0.0.1", 0), handler) as server:
        async with serving_until_drained(server):
            url = f"http://127.0.0.1:{server.server_address[1]}/page.txt"
            body = await trio.to_thread.run_sync(lambda: urllib.request.urlopen(url).read())
    assert body == b"from the partial's directory"


async def test_a_partial_reaches_pool_workers() -> None:
    partial = functools.partial(Greeter, greeting=b"worker ")
    with ForkingTCPServer(("127.0.0.1", 0), partial, max_children=1) as server:
        async with serving_until_drained(server):
            assert await ask(server, b"call\n", b"worker ") == b"worker call\n"


@pytest.mark.parametrize(
    "handler",
    [functools.partial(print), functools.partial(functools.partial(object)), lambda *a: None],
)
def test_anything_else_callable_is_refused_at_construction(handler: Any) -> None:
    with pytest.raises(TypeError, match=r"or a functools\.partial of one"):
        TCPServer(("127.0.0.1", 0), handler)
