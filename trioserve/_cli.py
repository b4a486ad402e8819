"""The command line: ``trioserve [MODULE:HANDLER] [--tcp ... | --udp ... | --unix ...]``.

What it does
------------
The command builds one server from its arguments, serves it, and stops it gracefully on
SIGINT or SIGTERM. It exists so that serving a handler needs no ``main()``: the handler
class is named as ``MODULE:HANDLER`` and imported with the current directory on
``sys.path``, as ``python -m`` does; with none, the built-in `EchoHandler` (or, for a
datagram transport, `DatagramEchoHandler`) is served, which is what ``make serve`` runs.

The transport picks the server class: ``--tcp`` and ``--unix`` a stream server,
``--udp`` and ``--unix-dgram`` a datagram server, each with the nursery policy, or, with
``--workers N``, a process pool of N workers (`_SERVER_CLASSES`).

The checks are the library's
----------------------------
Each flag that sets a server option is parsed from text into the value the constructor
takes (a number, ``none``, an octal mode, a network), and that value is then checked by
the check the server classes declare for the option (`trioserve._options`, the stream
servers' ``proxy_trusted``), given the flag as the option's name; addresses go through
`trioserve._binding.check_address`. So the command accepts exactly what the constructor
accepts, with the library's messages, and a check changed in the library changes here
too. What only the command knows is checked when the server is built: whether an option
applies to the transport (``--proxy-protocol`` to a stream, ``--unix-socket-mode`` to a
Unix socket) and to the handler (``--timeout`` to a stream handler).

Defaults for the open network
-----------------------------
The library keeps socketserver's defaults where porting needs them: a handler waits for
its peer for ever (``handler_timeout`` None). A server started from the command line is
a server of its own, so ``--timeout`` defaults to 60 seconds, nginx's client timeouts: it
applies to stream handlers whose class sets no ``timeout`` of its own, on stream
transports. ``--timeout none`` turns it off (``0`` is a timeout of zero, as the library
takes it: a read that has to wait fails at once). The other defaults are the library's,
and ``--help`` shows each.

Exit statuses: one line for a bad invocation, a traceback for a bug
-------------------------------------------------------------------
A user who mistypes an address, a module or a class name wants to read what is wrong, not
a traceback. Everything that can be checked before serving is checked then, and each
failure prints one line, ``trioserve: <what is wrong>``, on stderr, with exit status 2, as
for argparse's own usage errors (whose several lines of usage are cut to one here, too).
Status 2 is kept for what the library, or the command, refuses as bad input:

* the arguments: argparse's errors, and the library's checks of options and addresses;
* the handler: a module that does not import (whatever it raises while importing), a
  name it does not have, an object that is not a handler class, a handler of the wrong
  kind for the transport (a stream handler cannot answer datagrams);
* binding: the `OSError` the constructor raises for an address it cannot bind (a port in
  use, an unknown host, which is a `socket.gaierror`, a missing directory);
* a process pool that refuses to start: what ``serve_forever`` raises before any worker
  serves, a `TypeError` for a handler that cannot be sent to a worker process, or
  `WorkerStartupError` for workers that cannot load it.

Anything else raised while the server is built or starts (a `TypeError` from inside the
constructor, a `KeyError` from a handler module's ``__getattr__``) is a bug, in the
user's code or in trioserve, not a typo: it is logged at critical level with its
traceback, and the exit status is 1, as for a failure while serving.

Stopping
--------
The serving run owns a `trio.open_signal_receiver` for SIGINT and SIGTERM, so neither
becomes a `KeyboardInterrupt`. The first calls ``server.shutdown(grace)``: no new request
is taken and the requests in flight get ``--grace`` seconds to finish before they are
cancelled; when ``serve_forever`` returns the command exits with status 0. A second SIGINT
(an impatient Ctrl-C) cancels the serving scope outright, which cancels every handler at
once, and the command exits with status 130, the shell's code for "interrupted". For a
process pool, the parent does this, and the workers (in their own session, out of reach
of the terminal's Ctrl-C) are stopped by it with the same grace.

``--timeout`` is the server's ``handler_timeout`` option: the ``timeout`` of every handler
whose class leaves it None (each read and write on the connection). In a worker process
the option arrives with the server's other options, as the PROXY protocol options do.
"""

from __future__ import annotations

import argparse
import contextlib
import enum
import importlib
import importlib.util
import logging
import math
import os
import signal
import socket
import socketserver
import sys
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path
from typing import Any, Final, NoReturn

import trio

from . import _options
from ._binding import SocketServer, check_address, family_for
from ._compat import (
    ForkingTCPServer,
    ForkingUDPServer,
    ForkingUnixDatagramServer,
    ForkingUnixStreamServer,
    ThreadingTCPServer,
    ThreadingUDPServer,
    ThreadingUnixDatagramServer,
    ThreadingUnixStreamServer,
)
from ._datagram_handler import DatagramRequestHandler
from ._devreload import require_watchfiles, supervise, watch_lifeline
from ._exceptions import MissingExtraError, WorkerStartupError
from ._handlers import BaseRequestHandler, EchoHandler, _StreamHandlerBase
from ._metrics import bind_metrics, require_prometheus, serve_metrics
from ._policy import ProcessPoolMixIn
from ._proxy import DEFAULT_TRUSTED
from ._stream import TCPServer

logger = logging.getLogger("trioserve")

#: A handler class, as the command line names one (never a partial).
_HandlerType = type[BaseRequestHandler] | type[socketserver.BaseRequestHandler]

__all__ = ["DatagramEchoHandler", "main"]

#: Exit statuses: served and stopped; failed while serving; bad invocation; interrupted.
EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 128 + signal.SIGINT

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 9000
#: ``--timeout``: the handlers' timeout on the command line (the library's default is None).
DEFAULT_TIMEOUT = 60.0
#: ``--grace``: the server's ``shutdown_grace``, as the library has it.
DEFAULT_GRACE = 5.0


class DatagramEchoHandler(DatagramRequestHandler):
    """Send every datagram back to its sender. The built-in handler for ``--udp``."""

    async def handle(self) -> None:
        await self.wfile.write(self.packet)


class UsageError(Exception):
    """A bad invocation: reported as one line on stderr, exit status 2."""


class Transport(enum.Enum):
    """The kinds of socket the command serves on, named as its options."""

    TCP = "tcp"
    UDP = "udp"
    UNIX = "unix"
    UNIX_DGRAM = "unix-dgram"

    @property
    def is_datagram(self) -> bool:
        """Whether this transport carries datagrams rather than a stream."""
        return self in (Transport.UDP, Transport.UNIX_DGRAM)


# (transport, process pool?) -> server class
_SERVER_CLASSES: dict[tuple[Transport, bool], type[SocketServer]] = {
    (Transport.TCP, False): ThreadingTCPServer,
    (Transport.TCP, True): ForkingTCPServer,
    (Transport.UNIX, False): ThreadingUnixStreamServer,
    (Transport.UNIX, True): ForkingUnixStreamServer,
    (Transport.UDP, False): ThreadingUDPServer,
    (Transport.UDP, True): ForkingUDPServer,
    (Transport.UNIX_DGRAM, False): ThreadingUnixDatagramServer,
    (Transport.UNIX_DGRAM, True): ForkingUnixDatagramServer,
}


# -- parsing the command line ---------------------------------------------------------------


class _Parser(argparse.ArgumentParser):
    """argparse, with its errors cut to one line."""

    def error(self, message: str) -> NoReturn:
        # "argument --workers: --workers must be at least 1, not 0": a library check
        # names the option (it is given the flag as the option's name), so say it once.
        head, _, rest = message.partition(": ")
        flag = head.removeprefix("argument ")
        if flag != head and rest.startswith((f"{flag} ", f"{flag}:")):
            message = rest
        raise UsageError(f"{message} (see {self.prog} --help)")


#: The default of a flag whose default is the command's or the library's, so that an
#: explicit value (``--timeout none`` included) can be told apart from none given.
_NOT_GIVEN: Final = object()


def _library_check(option: str) -> _options.Check:
    """The check that the command's server classes declare for *option*."""
    for server_class in _SERVER_CLASSES.values():
        check = _options.collect_options(server_class).get(option)
        if check is not None:
            return check
    raise LookupError(f"no server class takes {option!r}")  # pragma: no cover - a typo here


def _checked(flag: str, option: str, parse: Callable[[str], Any]) -> Callable[[str], Any]:
    """An argparse ``type`` for *flag*: *parse* the text, then the library's check of *option*.

    *parse* turns the text into the value the constructor takes, or raises
    `argparse.ArgumentTypeError`. The check is the one the server classes declare for
    *option*, given *flag* as the option's name, so the command accepts exactly what the
    constructor accepts, and refuses the rest with the library's message.
    """
    check = _library_check(option)

    def convert(text: str) -> Any:
        value = parse(text)
        try:
            return check(flag, value)
        except (TypeError, ValueError) as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    return convert


def _checked_address(family: int, address: Any) -> Any:
    """The library's address check (`check_address`), its errors made argparse's."""
    try:
        return check_address(family_for(family, address), address)
    except (TypeError, ValueError) as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _host_port(text: str) -> tuple[str, int]:
    """``HOST:PORT``, ``[IPV6]:PORT``, ``:PORT`` or ``PORT`` (the host defaults to 127.0.0.1)."""
    host, _, port = text.rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    elif ":" in host:
        raise argparse.ArgumentTypeError(f"write an IPv6 address in brackets: [{host}]:{port}")
    if not (port.isascii() and port.isdigit()):
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, not {text!r}")
    if not host.isascii():
        # The socket module encodes a host name with IDNA, and raises a bare TypeError
        # ("encoding of hostname failed") from bind for a name that does not encode.
        try:
            host.encode("idna")
        except UnicodeError:
            raise argparse.ArgumentTypeError(f"{host!r} is not a valid host name") from None
    address: tuple[str, int] = _checked_address(socket.AF_INET, (host or DEFAULT_HOST, int(port)))
    return address


def _path(text: str) -> str:
    path: str = _checked_address(socket.AF_UNIX, text)
    return path


def _whole_number(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, not {text!r}") from None


def _seconds_or_none(text: str) -> float | None:
    """A finite number of seconds, or ``none``."""
    if text.strip().lower() == "none":
        return None
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"expected a number of seconds or none, not {text!r}")
    return value


def _octal_mode(text: str) -> int:
    """A file mode in octal: ``660``, ``0660`` or ``0o660``."""
    try:
        return int(text, 8)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected an octal file mode such as 660 or 0o660, not {text!r}"
        ) from None


def _network(text: str) -> list[str]:
    return [text]  # proxy_trusted is a collection of networks; the flag gives one


_LOG_LEVELS = ("debug", "info", "warning", "error", "critical")


def _log_level(text: str) -> str:
    if text.lower() not in _LOG_LEVELS:
        raise argparse.ArgumentTypeError(f"expected one of {', '.join(_LOG_LEVELS)}, not {text!r}")
    return text.lower()


def _number(value: float | None) -> str:
    """A default as ``--help`` shows it: ``60``, ``10,000``, ``0.5``, or ``none``."""
    return "none" if value is None else f"{value:,g}"


def _version() -> str:
    from . import __version__  # the package, fully imported by the time this runs

    return f"%(prog)s {__version__}"


def build_parser() -> argparse.ArgumentParser:
    """The command's argument parser (its ``--help`` is the command's reference)."""
    parser = _Parser(
        prog="trioserve",
        description=(
            "Serve a trioserve (or socketserver) handler class. With no HANDLER, serve the "
            "built-in echo handler. SIGINT or SIGTERM stops the server gracefully: requests "
            "in flight get --grace seconds to finish; a second SIGINT stops it at once."
        ),
        epilog="Exit status: 0 when stopped by a signal, 2 for a bad invocation (one line "
        "on stderr), 1 for any other failure (logged with its traceback), 130 after a "
        "second SIGINT.",
    )
    parser.add_argument("--version", action="version", version=_version())
    parser.add_argument(
        "handler",
        nargs="?",
        metavar="MODULE:HANDLER",
        help="the handler class to serve, imported with the current directory on sys.path "
        "(default: the built-in echo handler)",
    )
    where = parser.add_mutually_exclusive_group()
    where.add_argument(
        "--tcp",
        type=_host_port,
        metavar="HOST:PORT",
        help=f"serve TCP (the default, on {DEFAULT_HOST}:{DEFAULT_PORT}); port 0 picks one",
    )
    where.add_argument("--udp", type=_host_port, metavar="HOST:PORT", help="serve UDP")
    where.add_argument("--unix", type=_path, metavar="PATH", help="serve a Unix stream socket")
    where.add_argument(
        "--unix-dgram", type=_path, metavar="PATH", help="serve a Unix datagram socket"
    )
    parser.add_argument(
        "--workers",
        type=_checked("--workers", "max_children", _whole_number),
        metavar="N",
        help="serve from a pool of N worker processes (default: serve in this process)",
    )
    parser.add_argument(
        "--max-connections",
        type=_checked("--max-connections", "max_connections", _whole_number),
        metavar="N",
        help="handle at most N requests at once (per worker); for datagram transports, "
        f"N datagrams (default: {_number(ThreadingTCPServer.max_connections)}, "
        f"or {_number(ThreadingUDPServer.max_concurrent_datagrams)} datagrams)",
    )
    parser.add_argument(
        "--timeout",
        type=_checked("--timeout", "handler_timeout", _seconds_or_none),
        default=_NOT_GIVEN,
        metavar="SECONDS",
        help="seconds any one read or write on a connection may wait for the peer "
        "(stream handlers whose class sets no timeout); none for no limit "
        f"(default: {_number(DEFAULT_TIMEOUT)})",
    )
    parser.add_argument(
        "--grace",
        type=_checked("--grace", "shutdown_grace", _seconds_or_none),
        default=DEFAULT_GRACE,
        metavar="SECONDS",
        help="seconds requests in flight get to finish on shutdown; none to wait for them "
        f"however long they take (default: {_number(DEFAULT_GRACE)})",
    )
    parser.add_argument(
        "--proxy-protocol",
        action="store_true",
        help="expect a PROXY protocol header (v1 or v2) from a load balancer at the start "
        "of each connection, and serve the connection as the client's it names "
        "(stream transports; default: off)",
    )
    parser.add_argument(
        "--proxy-trusted",
        type=_checked("--proxy-trusted", "proxy_trusted", _network),
        action="append",
        metavar="NETWORK",
        help="a network allowed to send the PROXY header, such as 10.0.0.0/8 (repeat for "
        f"more; default: {' and '.join(DEFAULT_TRUSTED)})",
    )
    parser.add_argument(
        "--proxy-header-timeout",
        type=_checked("--proxy-header-timeout", "proxy_header_timeout", _seconds_or_none),
        default=_NOT_GIVEN,
        metavar="SECONDS",
        help="seconds a connection has to send its PROXY header; none for no limit "
        f"(default: {_number(TCPServer.proxy_header_timeout)})",
    )
    parser.add_argument(
        "--unix-socket-mode",
        type=_checked("--unix-socket-mode", "unix_socket_mode", _octal_mode),
        metavar="MODE",
        help="the Unix socket file's mode, in octal such as 660 (--unix and --unix-dgram; "
        "default: as the umask leaves it)",
    )
    # -- operations (docs/operations.md)
    parser.add_argument(
        "--access-log",
        action="store_true",
        help="log one line per connection (and per datagram) to the trioserve.access "
        "logger: peer, transport, duration, bytes in and out, how it ended (default: off)",
    )
    parser.add_argument(
        "--metrics",
        type=_host_port,
        metavar="HOST:PORT",
        help="serve Prometheus metrics on http://HOST:PORT/metrics (needs the extra: "
        "pip install 'trioserve[metrics]'; default: off)",
    )
    parser.add_argument(
        "--reload",
        action="store_true",
        help="for development: restart the server when a .py file under the handler "
        "module's directory changes, keeping the listening socket (needs the extra: pip "
        "install 'trioserve[reload]'; not with --workers; default: off)",
    )
    parser.add_argument(
        "--log-level",
        type=_log_level,
        default="info",
        metavar="LEVEL",
        help=f"log at this level or above: {', '.join(_LOG_LEVELS)} (default: info)",
    )
    return parser


# -- the handler ----------------------------------------------------------------------------


def load_handler(spec: str) -> _HandlerType:
    """Import ``MODULE:HANDLER`` and check that it names a handler class.

    The current directory is put first on ``sys.path`` (as ``python -m`` does), so a
    module next to the user is found. ``HANDLER`` may be dotted (``Outer.Inner``).

    Raises:
      UsageError: the spec is malformed, the module does not import, the name is not
        found, or the object is not a trioserve or socketserver handler class.
    """
    module_name, sep, qualname = spec.partition(":")
    if not sep or not module_name or not qualname:
        raise UsageError(f"expected MODULE:HANDLER (such as app:EchoHandler), not {spec!r}")
    cwd = os.getcwd()
    if cwd not in sys.path and "" not in sys.path:
        sys.path.insert(0, cwd)
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name is not None and module_name.startswith(exc.name):
            raise UsageError(f"no module named {module_name!r} (from {spec!r})") from None
        raise UsageError(f"cannot import {module_name!r}: {_one_line(exc)}") from None
    except Exception as exc:
        raise UsageError(f"cannot import {module_name!r}: {_one_line(exc)}") from None
    found: object = module
    for part in qualname.split("."):
        try:
            found = getattr(found, part)
        except AttributeError:
            raise UsageError(f"module {module_name!r} has no attribute {qualname!r}") from None
    if not isinstance(found, type) or not issubclass(
        found, (BaseRequestHandler, socketserver.BaseRequestHandler)
    ):
        raise UsageError(
            f"{spec} is not a handler class (a subclass of trioserve.BaseRequestHandler or "
            f"socketserver.BaseRequestHandler): it is {_describe(found)}"
        )
    return found


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _describe(value: object) -> str:
    if isinstance(value, type):
        return f"the class {value.__module__}.{value.__qualname__}"
    return f"{type(value).__name__} {value!r}"[:120]


def _is_stream_handler(handler_class: _HandlerType) -> bool:
    return issubclass(handler_class, (_StreamHandlerBase, socketserver.StreamRequestHandler))


def _is_datagram_handler(handler_class: _HandlerType) -> bool:
    return issubclass(handler_class, (DatagramRequestHandler, socketserver.DatagramRequestHandler))


def _check_fit(handler_class: _HandlerType, transport: Transport, spec: str) -> None:
    if transport.is_datagram and _is_stream_handler(handler_class):
        raise UsageError(
            f"{spec} is a stream handler; it cannot serve --{transport.value} "
            "(use --tcp or --unix, or a DatagramRequestHandler)"
        )
    if not transport.is_datagram and _is_datagram_handler(handler_class):
        raise UsageError(
            f"{spec} is a datagram handler; it cannot serve --{transport.value} "
            "(use --udp or --unix-dgram)"
        )


# -- building the server --------------------------------------------------------------------


def _transport_and_address(args: argparse.Namespace) -> tuple[Transport, Any]:
    for transport in Transport:
        address = getattr(args, transport.value.replace("-", "_"))
        if address is not None:
            return transport, address
    return Transport.TCP, (DEFAULT_HOST, DEFAULT_PORT)


def build_server(
    args: argparse.Namespace, listen_fd: int | None = None
) -> tuple[SocketServer, str]:
    """Build (and bind) the server the arguments describe; return it and its handler's name.

    With *listen_fd*, the server is built around that inherited, bound socket
    (``from_fd``) instead of binding one: the server process that ``--reload`` runs.

    The option values were checked by the library's checks as they were parsed; what is
    checked here is how they fit together (an option for another transport, or for
    another kind of handler).

    Raises:
      UsageError: anything wrong with the arguments, the handler, or the address
        (including one that cannot be bound: a port in use, an unknown host).
      Exception: anything else is a bug (in the handler's module, or in trioserve), and
        propagates as it is.
    """
    transport, address = _transport_and_address(args)
    if args.handler is None:
        handler_class: _HandlerType = DatagramEchoHandler if transport.is_datagram else EchoHandler
        name = handler_class.__name__
    else:
        handler_class = load_handler(args.handler)
        name = args.handler
        _check_fit(handler_class, transport, name)
    options: dict[str, Any] = {"shutdown_grace": args.grace}
    options.update(_timeout_options(args, transport, handler_class, name))
    options.update(_proxy_options(args, transport))
    if args.unix_socket_mode is not None:
        if transport not in (Transport.UNIX, Transport.UNIX_DGRAM):
            raise UsageError(
                "--unix-socket-mode applies to Unix transports only (--unix, --unix-dgram), "
                f"not --{transport.value}"
            )
        options["unix_socket_mode"] = args.unix_socket_mode
    if args.max_connections is not None:
        key = "max_concurrent_datagrams" if transport.is_datagram else "max_connections"
        options[key] = args.max_connections
    if args.workers is not None:
        options["max_children"] = args.workers
    if args.access_log:
        options["access_log"] = True
    if args.metrics is not None:
        options["duration_histogram"] = True  # for the handler-duration histogram
    server_class = _SERVER_CLASSES[(transport, args.workers is not None)]
    try:
        if listen_fd is not None:
            options.pop("unix_socket_mode", None)  # the socket file exists already
            server = server_class.from_fd(listen_fd, handler_class, **options)
        else:
            server = server_class(address, handler_class, **options)
    except OSError as exc:  # binding: a port in use, an unknown host, a missing directory
        raise UsageError(_bind_error(exc, transport, address)) from None
    return server, name


def _timeout_options(
    args: argparse.Namespace, transport: Transport, handler_class: _HandlerType, name: str
) -> dict[str, Any]:
    """``handler_timeout``: ``--timeout``, or the command's default where it applies."""
    applies = not transport.is_datagram and _is_stream_handler(handler_class)
    if args.timeout is _NOT_GIVEN:
        return {"handler_timeout": DEFAULT_TIMEOUT} if applies else {}
    if args.timeout is None:
        return {}  # --timeout none: the handlers' own (the library's default)
    if transport.is_datagram:
        raise UsageError(f"--timeout applies to stream transports only, not --{transport.value}")
    if not applies:
        raise UsageError(
            f"--timeout sets a StreamRequestHandler's timeout; {name} is not a stream handler"
        )
    return {"handler_timeout": args.timeout}


def _proxy_options(args: argparse.Namespace, transport: Transport) -> dict[str, Any]:
    """``proxy_protocol`` and its options, for a stream transport."""
    if not args.proxy_protocol:
        for flag, given in (
            ("--proxy-trusted", args.proxy_trusted is not None),
            ("--proxy-header-timeout", args.proxy_header_timeout is not _NOT_GIVEN),
        ):
            if given:
                raise UsageError(f"{flag} applies with --proxy-protocol only")
        return {}
    if transport.is_datagram:
        raise UsageError(
            f"--proxy-protocol applies to stream transports only, not --{transport.value}"
        )
    options: dict[str, Any] = {"proxy_protocol": True}
    if args.proxy_trusted is not None:  # one tuple of networks per --proxy-trusted
        options["proxy_trusted"] = tuple(net for nets in args.proxy_trusted for net in nets)
    if args.proxy_header_timeout is not _NOT_GIVEN:
        options["proxy_header_timeout"] = args.proxy_header_timeout
    return options


def _bind_error(exc: Exception, transport: Transport, address: Any) -> str:
    where = _where(transport, address)
    message = " ".join(str(exc).split())
    return f"cannot serve on {where}: {message}"


def _where(transport: Transport, address: Any) -> str:
    if isinstance(address, tuple):
        host, port = address[:2]
        host = f"[{host}]" if ":" in host else host
        return f"{transport.value} {host}:{port}"
    if isinstance(address, bytes):
        address = address.decode(errors="replace")
    return f"{transport.value} {address}"


def _try_hint(transport: Transport, address: Any) -> str:
    if isinstance(address, tuple):
        host, port = address[:2]
        flag = "-u " if transport is Transport.UDP else ""
        return f"nc {flag}{host} {port}"
    flag = "-uU" if transport is Transport.UNIX_DGRAM else "-U"
    return f"nc {flag} {address}"


def describe(server: SocketServer, name: str, workers: int | None) -> str:
    """The line printed once the server serves: what, where (the real port), and how to try."""
    transport = {
        (False, False): Transport.TCP,
        (False, True): Transport.UNIX,
        (True, False): Transport.UDP,
        (True, True): Transport.UNIX_DGRAM,
    }[(server.socket_type == socket.SOCK_DGRAM, isinstance(server.server_address, (str, bytes)))]
    where = _where(transport, server.server_address)
    pool = f" with {workers} worker processes" if workers else ""
    hint = _try_hint(transport, server.server_address)
    return f"trioserve: serving {name} on {where}{pool} (try: {hint})"


# -- serving --------------------------------------------------------------------------------


async def serve(
    server: SocketServer,
    announce: Callable[[], None],
    grace: float | None,
    metrics: socket.socket | None = None,
) -> int:
    """Serve *server* until a signal stops it; return the exit status.

    SIGINT and SIGTERM call ``server.shutdown(grace)``; a second SIGINT cancels everything.
    *announce* runs once the server serves (for a pool: once every worker is ready).
    *metrics*, a listening socket, serves ``/metrics`` for the server while it serves.

    Raises:
      UsageError: a process pool refused to start: its handler cannot be sent to a worker
        process, or the workers cannot load it.
    """
    status = EXIT_OK
    failed_to_start: BaseException | None = None
    # What a process pool's serve_forever raises, before any worker serves, for what it
    # refuses: something that cannot be sent to a worker (TypeError), or workers that
    # cannot load the handler (WorkerStartupError). Anything else is a bug, logged by main.
    startup_errors: tuple[type[Exception], ...] = (
        (TypeError, WorkerStartupError) if isinstance(server, ProcessPoolMixIn) else ()
    )
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with trio.open_nursery() as nursery:

            async def serve_then_stop(task_status: trio.TaskStatus[None]) -> None:
                await server.serve_forever(task_status=task_status)
                nursery.cancel_scope.cancel()

            async def stop_on_signals() -> None:
                nonlocal status
                stopping = False
                async for signum in signals:
                    sig = signal.Signals(signum).name
                    if not stopping:
                        stopping = True
                        logger.info(
                            "%s: shutting down; requests in flight have %s to finish%s",
                            sig,
                            "as long as they need" if grace is None else f"{grace:g} s",
                            " (Ctrl-C again to stop at once)" if signum == signal.SIGINT else "",
                        )
                        server.shutdown(grace)
                    elif signum == signal.SIGINT:
                        logger.warning("%s again: cancelling every request", sig)
                        status = EXIT_INTERRUPTED
                        nursery.cancel_scope.cancel()

            nursery.start_soon(stop_on_signals)
            if metrics is not None:
                await nursery.start(partial(serve_metrics, server, metrics))
            try:
                await nursery.start(serve_then_stop)
            except startup_errors as exc:
                # Raised after the nursery, which would wrap it in an ExceptionGroup.
                failed_to_start = exc
                nursery.cancel_scope.cancel()
            else:
                announce()
    if failed_to_start is not None:
        raise UsageError(_one_line_of(failed_to_start))
    return status


def _one_line_of(exc: BaseException) -> str:
    """The message of *exc* in one line; a traceback within it cut to its last line."""
    text = str(exc)
    head, traceback, tail = text.partition("Traceback (most recent call last):")
    if traceback:
        logger.debug("%s", text)
        last = [line for line in tail.splitlines() if line.strip()][-1:]
        text = f"{head.strip()} {last[0].strip() if last else ''}"
    return " ".join(text.split()) or type(exc).__name__


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``trioserve`` command; return its exit status.

    Args:
      argv: the arguments, without the program name; None for ``sys.argv[1:]``.

    Returns:
      0 after a graceful stop; 2 for a bad invocation (one line on stderr says what is
      wrong); 1 for any other failure, at start-up or while serving (logged, with its
      traceback, at critical level); 130 after a second SIGINT.
    """
    try:
        args = build_parser().parse_args(argv)
    except UsageError as exc:
        return _usage_error(exc)
    logging.basicConfig(
        level=args.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    if args.reload:
        try:
            return _reload(args, sys.argv[1:] if argv is None else list(argv))
        except (UsageError, MissingExtraError) as exc:
            return _usage_error(UsageError(str(exc)))
    return _serve_command(args)


# -- --reload (docs/operations.md; the design is in trioserve._devreload) ---------------------


def _reload(args: argparse.Namespace, argv: list[str]) -> int:
    """``--reload``: bind here, serve in a server process restarted when the code changes."""
    if args.workers is not None:
        raise UsageError(
            "--reload cannot be used with --workers: a process pool supervises its own "
            "processes (reload serves in one process, for development)"
        )
    require_watchfiles()
    if args.metrics is not None:
        require_prometheus()
    transport, address = _transport_and_address(args)
    watch = _watch_directory(args.handler)
    options: dict[str, Any] = {}
    if args.unix_socket_mode is not None:
        options["unix_socket_mode"] = args.unix_socket_mode
    handler_class = DatagramEchoHandler if transport.is_datagram else EchoHandler
    try:  # bound here and kept: the server processes serve on it in turn
        binder = _SERVER_CLASSES[(transport, False)](address, handler_class, **options)
    except OSError as exc:
        raise UsageError(_bind_error(exc, transport, address)) from None
    with contextlib.ExitStack() as closing:
        closing.enter_context(binder)
        sockets: list[Any] = [binder.socket]
        if args.metrics is not None:
            try:
                sockets.append(closing.enter_context(bind_metrics(args.metrics)))
            except OSError as exc:
                raise UsageError(_bind_error(exc, Transport.TCP, args.metrics)) from None
        raw = [socket.socket(fileno=os.dup(sock.fileno())) for sock in sockets]
        for each in raw:
            closing.enter_context(each)
        logger.info("--reload: watching %s for changes to .py files", watch)
        return trio.run(supervise, argv, raw, watch, args.grace)


def _watch_directory(handler: str | None) -> Path:
    """The directory of the handler's module (the current one for the echo handler)."""
    if handler is None:
        return Path.cwd()
    module_name = handler.partition(":")[0]
    cwd = os.getcwd()
    if cwd not in sys.path and "" not in sys.path:
        sys.path.insert(0, cwd)
    try:
        spec = importlib.util.find_spec(module_name)
    except (ImportError, ValueError):
        spec = None
    if spec is None or spec.origin is None:
        raise UsageError(f"no module named {module_name!r} (from {handler!r})")
    return Path(spec.origin).resolve().parent


def serve_inherited() -> None:
    """A ``--reload`` server process: the command, on the sockets its supervisor passed.

    argv: ``FDS ARGS...``, FDS the comma-separated descriptors (the server's, then the
    metrics' with ``--metrics``). Not for direct use.
    """
    fds = [int(fd) for fd in sys.argv[1].split(",")]
    argv = sys.argv[2:]
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    watch_lifeline(args.grace)
    metrics_fd = fds[1] if len(fds) > 1 else None
    sys.exit(_serve_command(args, fds[0], metrics_fd))


# -- serving the command ----------------------------------------------------------------------


def _serve_command(
    args: argparse.Namespace, listen_fd: int | None = None, metrics_fd: int | None = None
) -> int:
    """Build the server the arguments describe and serve it; return the exit status.

    *listen_fd*, *metrics_fd*: serve on these inherited listening sockets instead of
    binding (a server process run by ``--reload``, whose supervisor keeps them).
    """
    metrics: socket.socket | None = None
    try:
        if args.metrics is not None:
            require_prometheus()
            try:
                if metrics_fd is not None:
                    metrics = socket.socket(fileno=metrics_fd)
                    metrics.set_inheritable(False)
                else:
                    metrics = bind_metrics(args.metrics)
            except OSError as exc:
                raise UsageError(_bind_error(exc, Transport.TCP, args.metrics)) from None
        server, name = build_server(args, listen_fd)
    except (UsageError, MissingExtraError) as exc:
        if metrics is not None:
            metrics.close()
        return _usage_error(UsageError(str(exc)))
    except Exception:
        if metrics is not None:
            metrics.close()
        # Not something the library refuses as bad input: a bug, in the handler's module
        # (its module-level __getattr__, say) or in trioserve. Its traceback is the report.
        what = args.handler or "the echo handler"
        logger.critical("cannot serve %s: unexpected error at start-up", what, exc_info=True)
        return EXIT_FAILED
    with contextlib.ExitStack() as closing:
        if metrics is not None:
            closing.callback(metrics.close)
        return _serve_built(server, name, args, metrics)


def _serve_built(
    server: SocketServer, name: str, args: argparse.Namespace, metrics: socket.socket | None
) -> int:
    def announce() -> None:
        print(describe(server, name, args.workers), flush=True)
        if metrics is not None:
            host, port = metrics.getsockname()[:2]
            host = f"[{host}]" if ":" in host else host
            print(f"trioserve: metrics on http://{host}:{port}/metrics", flush=True)

    with server:
        try:
            return trio.run(serve, server, announce, args.grace, metrics)
        except UsageError as exc:
            return _usage_error(exc)
        except Exception:
            logger.critical("serving %s failed", name, exc_info=True)
            return EXIT_FAILED


def _usage_error(exc: UsageError) -> int:
    print(f"trioserve: {exc}", file=sys.stderr, flush=True)
    return EXIT_USAGE
