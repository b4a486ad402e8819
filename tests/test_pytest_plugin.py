"""The pytest plugin: the trioserve_ fixtures, used here directly and in inner sessions."""

from __future__ import annotations

import socket
from types import ModuleType

import pytest
import trio

import trioserve
from trioserve import StreamRequestHandler, TCPServer, ThreadingTCPServer
from trioserve.testing import ServerFactory, pytest_plugin

from .helpers import roundtrip

pytest_plugins = ["pytester"]


class UpperHandler(StreamRequestHandler):
    async def handle(self) -> None:
        async for line in self.rfile:
            await self.wfile.write(line.upper())


# -- the fixtures, used by this session ---------------------------------------------------


@pytest.mark.usefixtures("fd_leak_check")
async def test_factory_serves_on_an_ephemeral_loopback_port(
    trioserve_server_factory: ServerFactory,
) -> None:
    server = await trioserve_server_factory(UpperHandler)
    assert type(server) is ThreadingTCPServer
    host, port = server.server_address
    assert host == "127.0.0.1"
    assert port > 0
    assert await roundtrip(server, b"factory\n") == b"FACTORY\n"


@pytest.mark.usefixtures("fd_leak_check")
async def test_factory_takes_a_server_class_and_options(
    trioserve_server_factory: ServerFactory,
) -> None:
    unix = await trioserve_server_factory(UpperHandler, trioserve.ThreadingUnixStreamServer)
    plain = await trioserve_server_factory(UpperHandler, TCPServer, max_connections=3)
    assert await trio.Path(unix.server_address).exists()
    assert plain.max_connections == 3
    assert await roundtrip(unix, b"unix\n") == b"UNIX\n"
    assert await roundtrip(plain, b"plain\n") == b"PLAIN\n"


@pytest.fixture
def trioserve_handler() -> type[UpperHandler]:
    return UpperHandler


async def test_trioserve_server_serves_the_overridden_handler(
    trioserve_server: trioserve.SocketServer,
) -> None:
    assert isinstance(trioserve_server, ThreadingTCPServer)
    assert await roundtrip(trioserve_server, b"fixture\n") == b"FIXTURE\n"


@pytest.mark.parametrize("trioserve_server_class", [trioserve.ThreadingUnixStreamServer])
async def test_trioserve_server_class_can_be_parametrized(
    trioserve_server: trioserve.SocketServer,
) -> None:
    assert trioserve_server.address_family == socket.AF_UNIX
    assert await roundtrip(trioserve_server, b"param\n") == b"PARAM\n"


def test_the_plugin_is_loaded_and_has_fixtures_only(pytestconfig: pytest.Config) -> None:
    plugin = pytestconfig.pluginmanager.get_plugin("trioserve")
    assert isinstance(plugin, ModuleType)
    assert plugin is pytest_plugin
    assert not [name for name in vars(plugin) if name.startswith("pytest_")]
    assert sorted(name for name in vars(plugin) if name.startswith("trioserve_")) == [
        "trioserve_handler",
        "trioserve_server",
        "trioserve_server_class",
        "trioserve_server_factory",
    ]


# -- inner sessions ------------------------------------------------------------------------


@pytest.fixture
def inner(pytester: pytest.Pytester) -> pytest.Pytester:
    # The outer session imported trioserve already: the inner one cannot rewrite it.
    pytester.makeini(
        "[pytest]\ntrio_mode = true\nfilterwarnings = ignore::pytest.PytestAssertRewriteWarning\n"
    )
    return pytester


def test_servers_are_cancelled_and_closed_at_the_end_of_the_test(
    inner: pytest.Pytester,
) -> None:
    inner.makepyfile(
        """
        import os
        import trio
        import trioserve
        from trioserve.testing import connect

        seen = {}

        class Hold(trioserve.StreamRequestHandler):
            async def handle(self):
                seen["started"].set()
                try:
                    await trio.sleep_forever()
                except trio.Cancelled:
                    seen["cancelled"] = True
                    raise

        async def test_one(trioserve_server_factory):
            seen["started"] = trio.Event()
            tcp = await trioserve_server_factory(Hold)
            unix = await trioserve_server_factory(Hold, trioserve.UnixStreamServer)
            seen["servers"] = (tcp, unix)
            seen["client"] = await connect(tcp)  # held past the end of the test
            await seen["started"].wait()

        async def test_two():
            tcp, unix = seen["servers"]
            assert seen["cancelled"]
            assert tcp.socket.fileno() == -1 and unix.socket.fileno() == -1
            assert not os.path.exists(os.path.dirname(unix.server_address))
            assert await seen["client"].receive_some(10) == b""
            await seen["client"].aclose()
        """
    )
    inner.runpytest_inprocess().assert_outcomes(passed=2)


def test_a_leak_fails_the_teardown_naming_it(inner: pytest.Pytester) -> None:
    inner.makepyfile(
        """
        import socket
        import trioserve

        strays = []

        async def test_leaks(trioserve_server_factory):
            await trioserve_server_factory(trioserve.EchoHandler)
            strays.append(socket.socket(socket.AF_INET, socket.SOCK_DGRAM))

        async def test_no_check(trioserve_server_factory):
            await trioserve_server_factory(trioserve.EchoHandler, check_leaks=False)
            strays.append(socket.socket(socket.AF_INET, socket.SOCK_DGRAM))

        def test_z_cleanup():
            for sock in strays:
                sock.close()
        """
    )
    result = inner.runpytest_inprocess()
    # pytest-trio runs async fixtures' teardown in the test's own Trio run: a failure
    # there fails the test.
    result.assert_outcomes(passed=2, failed=1)
    result.stdout.fnmatch_lines(
        [
            "*AssertionError: the test's servers (<ThreadingTCPServer*) left behind: "
            "1 file descriptor: fd * (socket:*, ('0.0.0.0', 0), not connected)",
            "FAILED *::test_leaks - *",
        ]
    )


def test_a_server_crash_fails_the_teardown(inner: pytest.Pytester) -> None:
    inner.makepyfile(
        """
        import trio
        import trioserve
        from trioserve.testing import connect

        class Crashing(trioserve.ThreadingTCPServer):
            def service_actions(self):
                raise OSError("the server broke")

        async def test_crash(trioserve_server_factory):
            server = await trioserve_server_factory(trioserve.EchoHandler, Crashing)
            async with await connect(server) as client:
                assert await client.receive_some(10) == b""
        """
    )
    result = inner.runpytest_inprocess()
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["*OSError: the server broke", "FAILED *::test_crash*"])


def test_a_server_that_cannot_start_fails_the_test(inner: pytest.Pytester) -> None:
    inner.makepyfile(
        """
        import pytest
        import trioserve

        async def test_bad_option(trioserve_server_factory):
            with pytest.raises(TypeError, match="unexpected option 'no_such_option'"):
                await trioserve_server_factory(trioserve.EchoHandler, no_such_option=1)
        """
    )
    inner.runpytest_inprocess().assert_outcomes(passed=1)


def test_trioserve_server_without_a_handler_says_what_to_do(inner: pytest.Pytester) -> None:
    inner.makepyfile(
        """
        async def test_no_handler(trioserve_server):
            pass
        """
    )
    result = inner.runpytest_inprocess()
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(["*needs a handler class: define a trioserve_handler fixture*"])


def test_the_plugin_changes_nothing_for_tests_that_do_not_use_it(
    inner: pytest.Pytester,
) -> None:
    inner.makepyfile(
        """
        import trio

        async def test_plain():
            await trio.sleep(0)

        def test_sync():
            pass
        """
    )
    result = inner.runpytest_inprocess("--fixtures")
    result.stdout.fnmatch_lines(["*trioserve_server_factory*"])
    inner.runpytest_inprocess().assert_outcomes(passed=2)
    without = inner.runpytest_inprocess("-p", "no:trioserve")
    without.assert_outcomes(passed=2)


async def test_factory_used_directly_stops_newest_first() -> None:
    order: list[str] = []

    class Recording(ThreadingTCPServer):
        def server_close(self) -> None:
            order.append(self.name)
            super().server_close()

        name = ""

    async with trio.open_nursery() as nursery:
        factory = ServerFactory(nursery)
        first = await factory(UpperHandler, Recording)
        first.name = "first"
        second = await factory(UpperHandler, Recording)
        second.name = "second"
        await factory.stop_all()
    factory.check()
    assert order == ["second", "first"]
