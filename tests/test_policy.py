"""Concurrency policies: one at a time, a nursery with a limit, the mix-ins that pick them."""

from __future__ import annotations

import contextvars
import functools
import os
import socket
import socketserver
from typing import ClassVar

import pytest
import trio
import trio.testing

import trioserve
from trioserve import (
    Concurrency,
    EchoHandler,
    StreamRequestHandler,
    TCPServer,
    ThreadingTCPServer,
)
from trioserve._policy import IDLE_TASKS, Nursery
from trioserve._server import serve
from trioserve._serving import serving_tasks
from trioserve.testing import connect, exchange_datagram, serving

from .helpers import (
    PATIENCE,
    UpperHandler,
    receive_exactly,
)

pytestmark = pytest.mark.usefixtures("fd_leak_check")

LOCALHOST = ("127.0.0.1", 0)


# -- the mix-ins select a policy, in any base order ------------------------------------------


def test_mixin_order_does_not_matter() -> None:
    class MixinFirst(trioserve.ThreadingMixIn, TCPServer):
        pass

    class MixinLast(TCPServer, trioserve.ThreadingMixIn):
        pass

    assert MixinFirst.__mro__.index(TCPServer) > MixinFirst.__mro__.index(trioserve.NurseryMixIn)
    for cls in (MixinFirst, MixinLast, ThreadingTCPServer):
        with cls(("127.0.0.1", 0), EchoHandler) as server:
            assert server.concurrency is Concurrency.NURSERY
    with TCPServer(("127.0.0.1", 0), EchoHandler) as plain:
        assert plain.concurrency is Concurrency.SEQUENTIAL
    assert trioserve.ThreadingMixIn is trioserve.NurseryMixIn
    assert trioserve.ForkingMixIn is trioserve.ProcessPoolMixIn


def test_mixing_in_the_stdlib_threading_mixin_is_refused() -> None:
    with pytest.raises(TypeError, match=r"use trioserve\.ThreadingMixIn"):

        class Wrong(socketserver.ThreadingMixIn, TCPServer):  # type: ignore[misc]
            pass


def test_forking_mixin_is_the_process_pool_policy_in_any_base_order() -> None:
    class Late(trioserve.TCPServer, trioserve.ForkingMixIn):
        pass

    assert trioserve.ForkingMixIn is trioserve.ProcessPoolMixIn
    server = Late(("127.0.0.1", 0), EchoHandler, bind_and_activate=False, max_children=3)
    with server:
        assert server.concurrency is trioserve.Concurrency.PROCESS_POOL
        assert server.max_children == 3


# -- one at a time, or a nursery -------------------------------------------------------------


async def test_nursery_server_serves_fifty_clients_at_once() -> None:
    with ThreadingTCPServer(("127.0.0.1", 0), UpperHandler) as server:
        async with serving(server):
            streams = [await connect(server) for _ in range(50)]
            # All fifty are open at once; each is answered while the others stay open.
            for index, stream in enumerate(streams):
                await stream.send_all(b"client %d\n" % index)
            for index, stream in enumerate(reversed(streams)):
                number = 49 - index
                expected = b"CLIENT %d\n" % number
                assert await receive_exactly(stream, len(expected)) == expected
            for stream in streams:
                await stream.aclose()


async def test_plain_server_handles_one_connection_at_a_time(
    autojump_clock: trio.testing.MockClock,
) -> None:
    with TCPServer(("127.0.0.1", 0), UpperHandler) as server:
        async with serving(server):
            first = await connect(server)
            second = await connect(server)
            await first.send_all(b"one\n")
            await second.send_all(b"two\n")
            assert await receive_exactly(first, 4) == b"ONE\n"
            # The second connection waits until the first is done.
            with trio.move_on_after(0.2) as waited:
                await second.receive_some(10)
            assert waited.cancelled_caught
            await first.aclose()
            assert await receive_exactly(second, 4) == b"TWO\n"
            await second.aclose()


# -- request tasks: kept for the next request -----------------------------------------------

SEEN: contextvars.ContextVar[bytes] = contextvars.ContextVar("SEEN", default=b"unset")


class _TaskEcho(trioserve.BaseRequestHandler):
    """Answer with what the request's context held, and note the task that ran it."""

    tasks: ClassVar[list[trio.lowlevel.Task]] = []

    async def handle(self) -> None:
        data, sock = self.request
        self.tasks.append(trio.lowlevel.current_task())
        seen = SEEN.get()
        if data.startswith(b"set "):
            SEEN.set(data[4:])
        await sock.sendto(seen, self.client_address)


def _request_tasks(root: trio.lowlevel.Task) -> list[trio.lowlevel.Task]:
    found, below = [], [root]
    while below:
        for nursery in below.pop().child_nurseries:
            for child in nursery.child_tasks:
                below.append(child)
                if child.name == "trioserve._request.RequestPath.dispatch":
                    found.append(child)
    return found


async def test_requests_one_after_another_run_in_one_task() -> None:
    _TaskEcho.tasks = []
    with trioserve.ThreadingUDPServer(LOCALHOST, _TaskEcho) as server:
        async with serving(server):
            for number in range(5):
                with trio.fail_after(PATIENCE):
                    assert await exchange_datagram(server, b"%d" % number) == b"unset"
    assert len(_TaskEcho.tasks) == 5
    assert len(set(_TaskEcho.tasks)) == 1


async def test_a_context_variable_set_by_one_request_is_not_seen_by_the_next() -> None:
    _TaskEcho.tasks = []
    with trioserve.ThreadingUDPServer(LOCALHOST, _TaskEcho) as server:
        async with serving(server):
            for value in (b"set a", b"set b", b"plain", b"plain"):
                with trio.fail_after(PATIENCE):
                    assert await exchange_datagram(server, value) == b"unset"
    # A task whose context changed is not kept; the two plain requests share one.
    assert len(set(_TaskEcho.tasks)) == 3


async def test_after_a_burst_at_most_idle_tasks_wait_and_a_stop_ends_them() -> None:
    burst = IDLE_TASKS + 16
    arrived = 0
    all_in = trio.Event()
    release = trio.Event()

    class Held(trioserve.BaseRequestHandler):
        async def handle(self) -> None:
            nonlocal arrived
            data, sock = self.request
            arrived += 1
            if arrived == burst:
                all_in.set()
            await release.wait()
            await sock.sendto(data, self.client_address)

    with trioserve.ThreadingUDPServer(LOCALHOST, Held) as server, trio.fail_after(PATIENCE):
        # (The nursery's end is bounded too: it waits for serve_forever to return.)
        async with trio.open_nursery() as nursery:
            await nursery.start(server.serve_forever)
            (serve_task,) = serving_tasks() & set(nursery.child_tasks)
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as raw:
                client = trio.socket.from_stdlib_socket(raw)
                await client.connect(server.server_address)
                for number in range(burst):
                    await client.send(b"%d" % number)
                await all_in.wait()
                assert len(_request_tasks(serve_task)) == burst
                release.set()
                answers = {await client.recv(100) for _ in range(burst)}
                await trio.testing.wait_all_tasks_blocked()
            assert answers == {b"%d" % number for number in range(burst)}
            assert len(_request_tasks(serve_task)) == IDLE_TASKS
            # The tasks waiting for a request end with the run: serve_forever returns.
            server.shutdown()


# -- max_connections -------------------------------------------------------------------------


def test_the_default_limit_is_ten_thousand_connections() -> None:
    assert ThreadingTCPServer.max_connections == 10_000
    with ThreadingTCPServer(LOCALHOST, EchoHandler, max_connections=None) as server:
        assert server.max_connections is None


async def test_max_connections_bounds_handlers_and_the_rest_wait_in_the_backlog() -> None:
    running = 0
    peak = 0

    class Gate(StreamRequestHandler):
        async def handle(self) -> None:
            nonlocal running, peak
            running += 1
            peak = max(peak, running)
            try:
                await self.wfile.write(b"in\n")
                await self.rfile.readline()
            finally:
                running -= 1

    async with ThreadingTCPServer(LOCALHOST, Gate, max_connections=3) as server, serving(server):
        # Six clients connect: the kernel completes every handshake (they sit in the
        # backlog), but only three handlers run.
        clients = [await connect(server) for _ in range(6)]
        try:
            for client in clients[:3]:
                assert await receive_exactly(client, 3) == b"in\n"
            await trio.testing.wait_all_tasks_blocked()
            assert running == 3
            # One finishes: the next waiting client is accepted, and only then.
            await clients[0].send_all(b"bye\n")
            assert await receive_exactly(clients[3], 3) == b"in\n"
            await trio.testing.wait_all_tasks_blocked()
            assert running == 3
            for client in clients[1:4]:
                await client.send_all(b"bye\n")
            for client in clients[4:]:
                assert await receive_exactly(client, 3) == b"in\n"
                await client.send_all(b"bye\n")
        finally:
            for client in clients:
                await client.aclose()
    assert peak == 3


async def test_max_connections_stops_accepting_at_the_limit() -> None:
    entered = trio.Semaphore(0)
    release = trio.Event()

    class Handler(StreamRequestHandler):
        async def handle(self) -> None:
            entered.release()
            await release.wait()
            await self.wfile.write(b"served\n")

    with ThreadingTCPServer(("127.0.0.1", 0), Handler, max_connections=2) as server:
        async with serving(server):
            clients = [await connect(server) for _ in range(3)]
            await entered.acquire()
            await entered.acquire()
            await trio.testing.wait_all_tasks_blocked()
            # Two handlers run; the third connection waits in the kernel's backlog.
            assert entered.value == 0
            release.set()
            for client in clients:
                assert await client.receive_some() == b"served\n"
                await client.aclose()


# -- a graceful stop and the connections queued ---------------------------------------------


@pytest.mark.parametrize("take_queued", [True, False])
async def test_a_stop_serves_the_queued_connections_or_leaves_them_to_the_sockets_other_holders(
    take_queued: bool,
) -> None:
    # A pool's workers share one listening socket; a worker that a reload replaces must
    # leave what is queued to the workers that serve on. A duplicate of the socket stands
    # for them here.
    with ThreadingTCPServer(("127.0.0.1", 0), UpperHandler, max_connections=1) as server:
        others = socket.socket(fileno=os.dup(server.socket.fileno()))
        others.setblocking(False)
        policy = Nursery(1)
        policy.take_queued = take_queued
        with others:
            async with trio.open_nursery() as nursery:
                await nursery.start(functools.partial(serve, server, policy))
                held = await connect(server)
                await held.send_all(b"held\n")
                assert await receive_exactly(held, 5) == b"HELD\n"  # the one slot is taken
                queued = await connect(server)  # the kernel queues it: no slot is free
                await queued.send_all(b"queued\n")
                await trio.testing.wait_all_tasks_blocked()
                server.shutdown(PATIENCE)
                await held.aclose()  # its handler ends
                if take_queued:  # served within the grace, by this server
                    assert await receive_exactly(queued, 7) == b"QUEUED\n"
                    await queued.aclose()
            assert server.socket.fileno() == -1  # this server stopped listening either way
            if take_queued:
                with pytest.raises(BlockingIOError):
                    others.accept()  # nothing left in the queue
            else:
                # Left in the queue, unread: the socket's other holder takes it.
                taken, _ = others.accept()
                with taken:
                    taken.settimeout(PATIENCE)
                    assert taken.recv(100) == b"queued\n"
                await queued.aclose()
