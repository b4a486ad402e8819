"""Prometheus metrics: a server's statistics, served as ``/metrics`` in the text format.

An optional extra (``pip install trioserve[metrics]``, which brings ``prometheus-client``).
Nothing here runs on the request path: a scrape reads `~trioserve.BaseServer.statistics`,
the same snapshot anyone can take, and turns it into metric families with
``prometheus-client``'s own classes and text encoder (`metrics_text`). For a process
pool that snapshot is already the sum over its workers (see `trioserve._stats`), so the
parent alone serves the endpoint.

The endpoint (`serve_metrics`) is a small HTTP/1.0 responder in a Trio task of the run
that serves the server, on a socket of its own: ``GET /metrics`` answers the metrics,
anything else 404, one request per connection, with a bound on the request's size and on
the time it may take to arrive. It is not a general HTTP server, and is meant for a
Prometheus on a private network, as its address says (``--metrics 127.0.0.1:9100``).
"""

from __future__ import annotations

import logging
import socket
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any, Final

import trio

from ._server import BaseServer
from ._stats import DURATION_BUCKETS

if TYPE_CHECKING:
    from prometheus_client.metrics_core import Metric

from ._exceptions import MissingExtraError

__all__ = [
    "bind_metrics",
    "metrics_text",
    "require_prometheus",
    "serve_metrics",
]

logger = logging.getLogger("trioserve")

#: The largest request head the endpoint reads.
MAX_REQUEST = 8192
#: Seconds a scraper has to send its request.
REQUEST_TIMEOUT: Final = 10.0


def require_prometheus() -> None:
    """Check that ``prometheus-client`` is installed (`MissingExtraError` if not)."""
    MissingExtraError.check("prometheus_client", "prometheus-client", "--metrics", "metrics")


class _Collector:
    """A ``prometheus-client`` collector over one server's `statistics`."""

    def __init__(self, server: Any) -> None:
        self._server = server

    def collect(self) -> Iterator[Metric]:
        from prometheus_client.core import (
            CounterMetricFamily,
            GaugeMetricFamily,
            HistogramMetricFamily,
        )

        # The library's own, even where a subclass has an attribute of that name.
        stats = BaseServer.statistics(self._server)
        yield CounterMetricFamily(
            "trioserve_connections",
            "Connections (and datagrams) taken.",
            value=stats.total_connections,
        )
        yield GaugeMetricFamily(
            "trioserve_active_connections",
            "Connections (and datagrams) being handled.",
            value=stats.active_connections,
        )
        yield GaugeMetricFamily(
            "trioserve_busy_threads",
            "Worker threads running a sync handler.",
            value=stats.busy_threads,
        )
        yield CounterMetricFamily(
            "trioserve_bytes_received",
            "Bytes received on TCP connections that ended, and in datagrams.",
            value=stats.bytes_received,
        )
        yield CounterMetricFamily(
            "trioserve_bytes_sent",
            "Bytes sent on TCP connections that ended.",
            value=stats.bytes_sent,
        )
        yield CounterMetricFamily(
            "trioserve_handler_errors",
            "Requests whose handler raised.",
            value=stats.handler_errors,
        )
        cumulative = 0
        buckets: list[tuple[str, float]] = []
        for bound, count in zip(
            (*(repr(b) for b in DURATION_BUCKETS), "+Inf"), stats.duration_buckets, strict=True
        ):
            cumulative += count
            buckets.append((bound, cumulative))
        yield HistogramMetricFamily(
            "trioserve_handler_duration_seconds",
            "Time from taking a request to the end of its handler.",
            buckets=buckets,
            sum_value=stats.duration_sum,
        )


def metrics_text(server: Any) -> bytes:
    """*server*'s statistics in the Prometheus text format."""
    from prometheus_client import CollectorRegistry, generate_latest

    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Collector(server))
    return generate_latest(registry)


def bind_metrics(address: tuple[str, int]) -> socket.socket:
    """A listening socket for the endpoint on *address* (bound now, so errors come early).

    Raises:
      OSError: the address cannot be bound.
    """
    family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
    return socket.create_server(address, family=family, backlog=128)


async def serve_metrics(
    server: Any,
    sock: socket.socket,
    *,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve ``/metrics`` for *server* on the listening socket *sock* until cancelled.

    Resource handling:
      *sock* is closed when this returns; so is every connection it accepted.
    """
    from prometheus_client import CONTENT_TYPE_LATEST

    listener = trio.SocketListener(trio.socket.from_stdlib_socket(sock))

    async def answer(stream: trio.SocketStream) -> None:
        with trio.move_on_after(REQUEST_TIMEOUT):
            head = b""
            while b"\r\n\r\n" not in head and b"\n\n" not in head:
                if len(head) > MAX_REQUEST:
                    return
                chunk = await stream.receive_some(MAX_REQUEST)
                if not chunk:
                    return
                head += chunk
            method, _, rest = head.partition(b" ")
            target = rest.split(b" ", 1)[0].split(b"?", 1)[0]
            if method in (b"GET", b"HEAD") and target == b"/metrics":
                body = metrics_text(server)
                status, kind = b"200 OK", CONTENT_TYPE_LATEST.encode()
            else:
                body = b"not found: try /metrics\n"
                status, kind = b"404 Not Found", b"text/plain; charset=utf-8"
            reply = (
                b"HTTP/1.0 " + status + b"\r\nContent-Type: " + kind + b"\r\n"
                b"Content-Length: " + str(len(body)).encode() + b"\r\n"
                b"Connection: close\r\n\r\n"
            )
            await stream.send_all(reply if method == b"HEAD" else reply + body)

    async def handle(stream: trio.SocketStream) -> None:
        try:
            async with stream:
                await answer(stream)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass  # the scraper went away
        except Exception:
            logger.exception("the metrics endpoint failed to answer a scrape")

    async with listener, trio.open_nursery() as nursery:
        await nursery.start(trio.serve_listeners, handle, [listener])
        task_status.started()
