"""Request handlers: setup, handle and finish; rfile and wfile; sync or async; partials."""

from __future__ import annotations

import contextlib
import functools
import http.server
import io
import logging
import socket
import socketserver
import sys
import urllib.request
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing

import trioserve
from trioserve import (
    DatagramRequestHandler,
    ForkingTCPServer,
    LineTooLongError,
    StreamRequestHandler,
    StreamSocket,
    SyncStreamRequestHandler,
    TCPServer,
    ThreadingHTTPServer,
    ThreadingTCPServer,
    ThreadingUDPServer,
)
from trioserve.testing import connect, exchange_datagram, serving

from .helpers import (
    UpperHandler,
    receive_exactly,
    receive_until_eof,
    roundtrip,
    trioserve_records,
)

if sys.version_info >= (3, 11):
    from typing import assert_type
else:
    from typing_extensions import assert_type

pytestmark = pytest.mark.usefixtures("fd_leak_check")

LOCALHOST = ("127.0.0.1", 0)


# -- functools.partial handler classes, as socketserver code passes them -------------------


@pytest.fixture
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


@pytest.mark.usefixtures("no_errors_logged")
@pytest.mark.parametrize("handler", [Greeter, SyncGreeter])
async def test_a_partial_handler_gets_its_arguments(
    handler: type[Greeter] | type[SyncGreeter],
) -> None:
    partial = functools.partial(handler, greeting=b"hello ")
    with ThreadingTCPServer(("127.0.0.1", 0), partial) as server:
        async with serving_until_drained(server):
            assert await ask(server, b"world\n", b"hello ") == b"hello world\n"


@pytest.mark.usefixtures("no_errors_logged")
async def test_nested_partials_and_a_plain_server() -> None:
    nested = functools.partial(functools.partial(Greeter, greeting=b"nested"), greeting=b"outer ")
    with TCPServer(("127.0.0.1", 0), nested) as server:
        async with serving_until_drained(server):
            assert await ask(server, b"layer\n", b"outer ") == b"outer layer\n"


@pytest.mark.usefixtures("no_errors_logged")
async def test_a_partial_datagram_handler() -> None:
    partial = functools.partial(DatagramGreeter, greeting=b"hi ")
    with ThreadingUDPServer(("127.0.0.1", 0), partial) as server:
        async with serving_until_drained(server):
            assert await exchange_datagram(server, b"there") == b"hi there"


@pytest.mark.usefixtures("no_errors_logged")
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


@pytest.mark.usefixtures("no_errors_logged")
async def test_a_partial_reaches_pool_workers() -> None:
    partial = functools.partial(Greeter, greeting=b"worker ")
    with ForkingTCPServer(("127.0.0.1", 0), partial, max_children=1) as server:
        async with serving_until_drained(server):
            assert await ask(server, b"call\n", b"worker ") == b"worker call\n"


@pytest.mark.usefixtures("no_errors_logged")
@pytest.mark.parametrize(
    "handler",
    [functools.partial(print), functools.partial(functools.partial(object)), object, 42],
)
def test_anything_else_is_refused_at_construction(handler: Any) -> None:
    with pytest.raises(TypeError, match=r"or a functools\.partial of one"):
        TCPServer(("127.0.0.1", 0), handler)


# -- what a handler class may be -------------------------------------------------------------


def test_handler_class_is_checked() -> None:
    with pytest.raises(TypeError, match="RequestHandlerClass must be a subclass"):
        TCPServer(("127.0.0.1", 0), object)


def test_async_handle_on_sync_stream_request_handler_is_refused() -> None:
    with pytest.raises(TypeError, match="plain def"):

        class Wrong(SyncStreamRequestHandler):
            async def handle(self) -> None:  # type: ignore[override]
                pass


def test_sync_stream_request_handler_is_typed_for_blocking_code() -> None:
    class Typed(SyncStreamRequestHandler):
        def handle(self) -> None:
            assert_type(self.rfile.readline(), bytes)
            assert_type(self.wfile.write(b"x"), int)
            assert_type(self.request.recv(10), bytes)

    def check(handler: Typed) -> None:
        assert_type(handler.rfile, io.BufferedIOBase)
        assert_type(handler.wfile, io.BufferedIOBase)
        assert_type(handler.request, socket.socket | StreamSocket)

    assert trioserve._handlers.is_sync_handler(Typed)
    assert trioserve._handlers.is_sync_handler(SyncStreamRequestHandler)
    del check


# -- setup, handle, finish -------------------------------------------------------------------


async def test_finish_runs_after_handle_raises() -> None:
    events: list[str] = []

    class Handler(StreamRequestHandler):
        async def setup(self) -> None:
            await super().setup()
            events.append("setup")

        async def handle(self) -> None:
            events.append("handle")
            raise RuntimeError("handler broke")

        async def finish(self) -> None:
            events.append("finish")
            await super().finish()

    class Quiet(TCPServer):
        def handle_error(self, request: Any, client_address: Any) -> None:
            events.append("handle_error")

    with Quiet(("127.0.0.1", 0), Handler) as server:
        async with serving(server), await connect(server) as client:
            assert await receive_until_eof(client) == b""
    assert events == ["setup", "handle", "finish", "handle_error"]


class Recording(trioserve.BaseRequestHandler):
    """Records its steps; ``handle`` raises when the request says so."""

    def __init__(self, request: Any, client_address: Any, server: Any) -> None:
        super().__init__(request, client_address, server)
        self.events: list[str] = request

    async def setup(self) -> None:
        self.events.append("setup")

    async def handle(self) -> None:
        await trio.lowlevel.checkpoint()
        self.events.append("handle")
        if "fail" in self.events:
            raise RuntimeError("handler broke")

    async def finish(self) -> None:
        await trio.lowlevel.checkpoint()
        self.events.append("finish")

    def _trioserve_end(self) -> Any:
        self.events.append("end")
        return super()._trioserve_end()


class SyncRecording(trioserve.BaseRequestHandler):
    """`Recording` as a sync handler."""

    def __init__(self, request: Any, client_address: Any, server: Any) -> None:
        super().__init__(request, client_address, server)
        self.events: list[str] = request

    def setup(self) -> None:
        self.events.append("setup")

    def handle(self) -> None:
        self.events.append("handle")
        if "fail" in self.events:
            raise RuntimeError("handler broke")

    def finish(self) -> None:
        self.events.append("finish")

    def _trioserve_end(self) -> Any:
        self.events.append("end")
        return super()._trioserve_end()


async def test_the_one_driver_runs_the_steps_in_order_for_both_kinds() -> None:
    from trioserve._handlers import run_async_handler, run_sync_handler_life

    for fail in (False, True):
        first = ["fail"] if fail else []
        for kind in ("async", "sync"):
            events = list(first)
            with pytest.raises(RuntimeError) if fail else contextlib.nullcontext():
                if kind == "async":
                    await run_async_handler(Recording, events, None, None)
                else:
                    run_sync_handler_life(SyncRecording, events, None, None)
            assert events == [*first, "setup", "handle", "finish", "end"], kind


async def test_a_cancelled_async_handler_still_runs_finish_and_the_end() -> None:
    from trioserve._handlers import run_async_handler

    events: list[str] = []

    class Waiting(Recording):
        async def handle(self) -> None:
            self.events.append("handle")
            await trio.sleep_forever()

        async def finish(self) -> None:
            self.events.append("finish")  # no checkpoint: it would be cancelled too

    with trio.CancelScope() as scope:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(run_async_handler, Waiting, events, None, None)
            await trio.testing.wait_all_tasks_blocked()
            scope.cancel()
    assert events == ["setup", "handle", "finish", "end"]


def test_a_sync_step_that_returns_a_coroutine_is_refused_and_finish_still_runs() -> None:
    from trioserve._handlers import run_sync_handler_life

    events: list[str] = []

    class Mixed(SyncRecording):
        def handle(self) -> Any:
            self.events.append("handle")
            return self.later()  # a coroutine, from a plain def: a mixed-up handler

        async def later(self) -> None:
            await trio.lowlevel.checkpoint()

    with pytest.raises(TypeError, match="all async def or all def"):
        run_sync_handler_life(Mixed, events, None, None)
    assert events == ["setup", "handle", "finish", "end"]


async def test_finish_runs_after_handle_raises_and_the_server_keeps_serving(
    caplog: pytest.LogCaptureFixture,
) -> None:
    steps: list[str] = []

    class Failing(StreamRequestHandler):
        def setup(self) -> None:
            steps.append("setup")
            super().setup()

        def handle(self) -> None:
            steps.append("handle")
            if self.rfile.readline() == b"fail\n":  # type: ignore[comparison-overlap]
                raise RuntimeError("handler bug")
            self.wfile.write(b"fine\n")  # type: ignore[unused-coroutine]

        def finish(self) -> None:
            steps.append("finish")
            super().finish()

    with ThreadingTCPServer(LOCALHOST, Failing) as server:
        async with serving(server):
            async with await connect(server) as stream:
                await stream.send_all(b"fail\n")
                assert await receive_until_eof(stream) == b""
            async with await connect(server) as stream:
                await stream.send_all(b"ok\n")
                assert await receive_until_eof(stream) == b"fine\n"
    assert steps == ["setup", "handle", "finish"] * 2
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 1
    assert errors[0].exc_info is not None
    assert isinstance(errors[0].exc_info[1], RuntimeError)


# -- rfile, wfile and the timeout ------------------------------------------------------------


async def test_buffered_wfile_is_flushed_by_finish() -> None:
    class Handler(StreamRequestHandler):
        wbufsize = 1 << 20

        async def handle(self) -> None:
            await self.wfile.write(b"buffered ")
            await self.wfile.write(b"reply\n")

    with ThreadingTCPServer(("127.0.0.1", 0), Handler) as server:
        async with serving(server), await connect(server) as client:
            assert await receive_exactly(client, 15) == b"buffered reply\n"


async def test_handler_timeout_disconnects_an_idle_client(
    autojump_clock: trio.testing.MockClock,
) -> None:
    class Handler(UpperHandler):
        timeout = 10

    with ThreadingTCPServer(("127.0.0.1", 0), Handler) as server:
        async with serving(server), await connect(server) as client:
            start = trio.current_time()
            assert await client.receive_some(10) == b""
            assert trio.current_time() - start == pytest.approx(10)


async def test_an_idle_client_is_disconnected_by_the_timeout(
    autojump_clock: trio.testing.MockClock,
) -> None:
    class Lines(UpperHandler):
        timeout = 30

    async with (
        ThreadingTCPServer(LOCALHOST, Lines, max_connections=1) as server,
        serving(server),
        await connect(server) as idle,
    ):
        start = trio.current_time()
        assert await receive_until_eof(idle) == b""
        assert trio.current_time() - start == pytest.approx(30)
        assert await roundtrip(server, b"after\n") == b"AFTER\n"


async def test_slowloris_is_disconnected_and_gives_its_slot_back(
    caplog: pytest.LogCaptureFixture, autojump_clock: trio.testing.MockClock
) -> None:
    caplog.set_level(logging.INFO, logger="trioserve")

    class Lines(UpperHandler):
        timeout = 0.5  # the client below drips faster than this per byte

    async with ThreadingTCPServer(LOCALHOST, Lines, max_connections=1) as server, serving(server):
        slow = await connect(server)
        async with slow, trio.open_nursery() as nursery:

            async def drip() -> None:
                for _ in range(100):  # bounded: 10 s at most
                    await slow.send_all(b"x")
                    await trio.sleep(0.1)

            nursery.start_soon(drip)
            start = trio.current_time()
            with trio.fail_after(10):  # sanity bound
                assert await receive_until_eof(slow) == b""
            elapsed = trio.current_time() - start
            nursery.cancel_scope.cancel()
        assert 0.4 <= elapsed < 5  # about the timeout: not the whole drip
        # Its only slot is free again.
        with trio.fail_after(10):
            assert await roundtrip(server, b"next\n") == b"NEXT\n"
    # A client that is too slow is logged in one info line, not as a server error.
    assert trioserve_records(caplog, logging.ERROR, exactly=True) == []
    [info] = trioserve_records(caplog, logging.INFO, exactly=True)
    assert "timed out" in info.getMessage()
    assert info.exc_info is None


async def test_line_too_long_reaches_the_handler_which_may_answer(
    caplog: pytest.LogCaptureFixture,
) -> None:
    class Polite(StreamRequestHandler):
        max_line_length = 4096

        async def handle(self) -> None:
            try:
                line = await self.rfile.readline()
            except LineTooLongError as exc:
                await self.wfile.write(b"line longer than %d bytes\n" % exc.max_line_length)
                return
            await self.wfile.write(line.upper())

    async with ThreadingTCPServer(LOCALHOST, Polite) as server, serving(server):
        async with await connect(server) as flood:
            with trio.move_on_after(10):  # the server may stop reading before all is sent
                try:
                    await flood.send_all(b"A" * 1_000_000)
                except trio.BrokenResourceError:
                    pass
            assert await receive_until_eof(flood) == b"line longer than 4096 bytes\n"
        assert await roundtrip(server, b"short\n") == b"SHORT\n"
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
