"""Sync connections their worker thread serves to the end: counted, bounded, waited for."""

from __future__ import annotations

import http.server
import sys
import threading
from typing import Any, ClassVar

import pytest
import trio
import trio.testing

from trioserve import BaseRequestHandler, ThreadingHTTPServer, ThreadingTCPServer, _sync
from trioserve._threads import THREAD_NAME, OwnedConnections, Tokens
from trioserve.testing import connect, serving

from .helpers import PATIENCE, LineReader, receive_until_eof

pytestmark = pytest.mark.usefixtures("fd_leak_check")

LOCALHOST = ("127.0.0.1", 0)


class Threads(http.server.BaseHTTPRequestHandler):
    """Answers with a body naming the thread that served the request."""

    protocol_version = "HTTP/1.1"
    seen: ClassVar[list[int]] = []

    def do_GET(self) -> None:
        self.seen.append(threading.get_ident())
        body = b"from %d" % threading.get_ident()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def threads() -> type[Threads]:
    class Handler(Threads):
        seen: ClassVar[list[int]] = []

    return Handler


async def _get(stream: trio.SocketStream, reader: LineReader) -> bytes:
    await stream.send_all(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
    head = await reader.readuntil(b"\r\n\r\n")
    length = int(head.lower().split(b"content-length:")[1].split(b"\r\n")[0])
    with trio.fail_after(PATIENCE):
        while len(reader.buffer) < length:
            reader.buffer += await stream.receive_some()
    body, reader.buffer = reader.buffer[:length], reader.buffer[length:]
    return bytes(body)


async def test_connections_ended_by_their_threads_are_counted_and_closed(
    threads: type[Threads],
) -> None:
    request = b"GET / HTTP/1.0\r\n\r\n"
    answers: list[bytes] = []
    with ThreadingHTTPServer(LOCALHOST, threads) as server:
        async with serving(server):  # its leak check: every descriptor closed, every thread done
            for _ in range(3):
                async with await connect(server) as client:
                    await client.send_all(request)
                    answers.append(await receive_until_eof(client))  # closed by the thread
        stats = server.statistics()
    assert all(answer.startswith(b"HTTP/1.1 200") for answer in answers)
    assert stats.total_connections == 3
    assert stats.active_connections == 0
    assert stats.busy_threads == 0
    assert stats.bytes_received == 3 * len(request)
    assert stats.bytes_sent == sum(map(len, answers))


@pytest.mark.parametrize("kind", ["def", "async def"])
async def test_handle_error_is_called_and_the_server_goes_on(
    kind: str, caplog: pytest.LogCaptureFixture
) -> None:
    errors: list[tuple[str, str]] = []

    class Failing(BaseRequestHandler):
        def handle(self) -> None:
            if self.request.recv(10) == b"fail":
                raise ValueError("a handler bug")
            self.request.sendall(b"fine")

    def record(request: Any, client_address: Any) -> None:
        errors.append((threading.current_thread().name, repr(sys.exc_info()[1])))

    async def record_async(request: Any, client_address: Any) -> None:
        record(request, client_address)

    class Server(ThreadingTCPServer):
        pass

    Server.handle_error = staticmethod(record if kind == "def" else record_async)  # type: ignore[assignment]

    with Server(LOCALHOST, Failing) as server:
        async with serving(server):
            for payload, answer in ((b"fail", b""), (b"work", b"fine")):
                async with await connect(server) as client:
                    await client.send_all(payload)
                    assert await receive_until_eof(client) == answer
        assert server.statistics().handler_errors == 1
    [(thread, error)] = errors
    assert error == "ValueError('a handler bug')"
    # As socketserver's ThreadingMixIn: a def hook in the handler's own thread; an async
    # one in Trio's.
    assert (thread == THREAD_NAME) is (kind == "def")


async def test_max_connections_counts_a_connection_until_its_thread_ends_it() -> None:
    inside = threading.Event()
    release = threading.Event()

    class Holding(BaseRequestHandler):
        def handle(self) -> None:
            inside.set()
            release.wait(PATIENCE)
            self.request.sendall(b"done")

    with ThreadingTCPServer(LOCALHOST, Holding, max_connections=1) as server:
        async with serving(server):
            async with await connect(server) as first, await connect(server) as second:
                assert await trio.to_thread.run_sync(inside.wait, PATIENCE)
                await trio.testing.wait_all_tasks_blocked()
                # The second waits in the listen queue: its slot is the first's.
                assert server.statistics().total_connections == 1
                release.set()
                assert await receive_until_eof(first) == b"done"
                assert await receive_until_eof(second) == b"done"
            assert server.statistics().total_connections == 2


async def test_cancelling_the_run_shuts_a_handed_off_connection_down_and_waits_for_it() -> None:
    inside = threading.Event()
    ended: list[bytes] = []

    class Blocked(BaseRequestHandler):
        def handle(self) -> None:
            inside.set()
            ended.append(self.request.recv(10))  # until the server shuts it down

    with ThreadingTCPServer(LOCALHOST, Blocked) as server:
        async with await connect(server) as client:
            async with serving(server):
                await client.send_all(b"")
                assert await trio.to_thread.run_sync(inside.wait, PATIENCE)
            # serving() cancelled serve_forever, which returned only once the thread had.
            assert ended == [b""]
            assert await receive_until_eof(client) == b""


async def test_a_keep_alive_request_sent_at_once_is_served_by_the_same_thread(
    threads: type[Threads], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(_sync, "_LINGER_MS", 60_000)  # any next request comes "at once"
    with ThreadingHTTPServer(LOCALHOST, threads) as server:
        async with serving(server), await connect(server) as client:
            reader = LineReader(client)
            answers = [await _get(client, reader) for _ in range(3)]
            await client.send_eof()  # ends the linger: the connection closes
            assert await receive_until_eof(client) == b""
    assert len(set(threads.seen)) == 1
    assert answers == [b"from %d" % threads.seen[0]] * 3


async def test_a_keep_alive_connection_gives_its_thread_back_while_it_waits(
    threads: type[Threads], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(_sync, "_LINGER_MS", 0)
    # One thread for two connections: each request is served only if the other
    # connection, idle, has given the thread back.
    with ThreadingHTTPServer(LOCALHOST, threads, max_handler_threads=1) as server:
        async with (
            serving(server),
            await connect(server) as first,
            await connect(server) as second,
        ):
            readers = {first: LineReader(first), second: LineReader(second)}
            for client in (first, second, first, second):
                with trio.fail_after(PATIENCE):
                    assert (await _get(client, readers[client])).startswith(b"from ")


# -- Tokens: a bound given back from any thread ----------------------------------------------


async def test_tokens_given_back_in_another_thread_wake_the_task_waiting() -> None:
    tokens = Tokens(1)
    tokens.acquire_nowait()
    with pytest.raises(trio.WouldBlock):
        tokens.acquire_nowait()
    got = trio.Event()

    async def take() -> None:
        await tokens.acquire()
        got.set()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(take)
        await trio.testing.wait_all_tasks_blocked()
        assert not got.is_set()
        await trio.to_thread.run_sync(tokens.release)
        with trio.fail_after(PATIENCE):
            await got.wait()
    assert tokens.available == 0


async def test_a_token_given_to_a_cancelled_waiter_goes_to_the_next() -> None:
    tokens = Tokens(1)
    tokens.acquire_nowait()
    order: list[str] = []

    async def take(name: str, scope: trio.CancelScope) -> None:
        with scope:
            await tokens.acquire()
            order.append(name)

    first, second = trio.CancelScope(), trio.CancelScope()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(take, "first", first)
        await trio.testing.wait_all_tasks_blocked()
        nursery.start_soon(take, "second", second)
        await trio.testing.wait_all_tasks_blocked()
        # Given to the first from another thread; the first is cancelled before the
        # run hears of it (this thread does not yield meanwhile): it passes it on.
        giver = threading.Thread(target=tokens.release)
        giver.start()
        giver.join(PATIENCE)
        first.cancel()
    assert order == ["second"]
    assert tokens.available == 0
    tokens.release()
    tokens.set_total(3)
    assert tokens.available == 3


async def test_tokens_taken_and_given_back_in_the_run_keep_their_count() -> None:
    tokens = Tokens(2)
    await tokens.acquire()  # free: taken at once
    tokens.acquire_nowait()
    assert tokens.available == 0
    with trio.CancelScope() as scope:
        scope.cancel()
        await tokens.acquire()  # a checkpoint: cancelled before it takes anything
    assert scope.cancelled_caught
    tokens.release()
    with trio.CancelScope() as scope:
        scope.cancel()
        await tokens.acquire()
    assert scope.cancelled_caught
    assert tokens.available == 1
    tokens.release()
    assert tokens.available == 2


async def test_raising_the_total_wakes_the_waiting_tasks_in_order() -> None:
    tokens = Tokens(0)
    order: list[str] = []

    async def take(name: str) -> None:
        await tokens.acquire()
        order.append(name)

    async with trio.open_nursery() as nursery:
        for name in ("first", "second", "third"):
            nursery.start_soon(take, name)
            await trio.testing.wait_all_tasks_blocked()
        # One token at a time: tasks woken together run in an order Trio picks.
        tokens.set_total(1)
        await trio.testing.wait_all_tasks_blocked()
        assert order == ["first"]
        tokens.set_total(2)
        await trio.testing.wait_all_tasks_blocked()
        assert order == ["first", "second"]
        assert tokens.available == 0
        tokens.release()  # the first's token, passed on to the third
    assert order == ["first", "second", "third"]
    assert tokens.available == 0


async def test_shutting_down_reaches_only_connections_not_yet_closed() -> None:
    shut: list[str] = []

    class Connection:
        def __init__(self, name: str) -> None:
            self.name = name

        def shut_down(self) -> None:
            shut.append(self.name)

    owned = OwnedConnections()
    a, b = Connection("a"), Connection("b")
    owned.add(a)
    owned.add(b)
    closed: list[str] = []
    owned.discard(a, lambda: closed.append("a"))
    assert owned.shut_down() == 1
    assert shut == ["b"]
    assert closed == ["a"]
    owned.discard(b)
    await owned.wait(object())  # nothing left: returns at once
