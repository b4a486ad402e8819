"""Prometheus metrics: ``/metrics`` scraped over HTTP, parsed by prometheus_client's parser."""

from __future__ import annotations

import os
import signal
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import trio

from trioserve import ForkingTCPServer, ThreadingTCPServer
from trioserve._metrics import bind_metrics, metrics_text, serve_metrics
from trioserve.testing import connect, serving

from .helpers import PATIENCE, receive_until_eof
from .test_cli import echo_tcp, run_command, trioserve
from .test_stats import REPLY_SIZE, REQUEST_SIZE, FailingHandler, PoolSizedHandler, SizedHandler

if os.environ.get("CI"):
    import prometheus_client.parser as parser
else:
    parser = pytest.importorskip(
        "prometheus_client.parser", reason="the metrics extra is not installed"
    )

pytestmark = pytest.mark.usefixtures("fd_leak_check")


def scrape(url: str) -> tuple[str, dict[str, float]]:
    """GET *url* with urllib; the content type, and every sample by name and labels."""
    with urllib.request.urlopen(url, timeout=PATIENCE) as response:
        kind = response.headers["Content-Type"]
        text = response.read().decode()
    samples: dict[str, float] = {}
    for family in parser.text_string_to_metric_families(text):
        for sample in family.samples:
            labels = ",".join(f"{k}={v}" for k, v in sorted(sample.labels.items()))
            samples[f"{sample.name}{{{labels}}}" if labels else sample.name] = sample.value
    return kind, samples


async def test_a_scrape_shows_the_servers_figures() -> None:
    with ThreadingTCPServer(("127.0.0.1", 0), SizedHandler, duration_histogram=True) as server:
        metrics = bind_metrics(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{metrics.getsockname()[1]}/metrics"
        async with trio.open_nursery() as nursery:
            await nursery.start(serve_metrics, server, metrics)
            async with serving(server):
                for _ in range(2):
                    async with await connect(server) as client:
                        await client.send_all(b"q" * REQUEST_SIZE)
                        await receive_until_eof(client)
                kind, samples = await trio.to_thread.run_sync(scrape, url)
                with pytest.raises(urllib.error.HTTPError) as not_found:
                    await trio.to_thread.run_sync(scrape, url.replace("/metrics", "/other"))
                not_found.value.close()
            nursery.cancel_scope.cancel()
    assert kind.startswith("text/plain; version=")  # prometheus-client's own
    assert not_found.value.code == 404
    assert samples["trioserve_connections_total"] == 2
    assert samples["trioserve_active_connections"] == 0
    assert samples["trioserve_busy_threads"] == 0
    assert samples["trioserve_bytes_received_total"] == 2 * REQUEST_SIZE
    assert samples["trioserve_bytes_sent_total"] == 2 * REPLY_SIZE
    assert samples["trioserve_handler_errors_total"] == 0
    assert samples["trioserve_handler_duration_seconds_count"] == 2
    assert samples["trioserve_handler_duration_seconds_bucket{le=+Inf}"] == 2
    assert samples["trioserve_handler_duration_seconds_sum"] > 0


async def test_errors_are_counted() -> None:
    with ThreadingTCPServer(("127.0.0.1", 0), FailingHandler) as server:
        async with serving(server), await connect(server) as client:
            await receive_until_eof(client)
        families = {
            f.name: f for f in parser.text_string_to_metric_families(metrics_text(server).decode())
        }
    assert families["trioserve_handler_errors"].samples[0].value == 1


async def test_a_pools_metrics_are_summed_over_its_workers() -> None:
    with ForkingTCPServer(("127.0.0.1", 0), PoolSizedHandler, max_children=2) as server:
        async with trio.open_nursery() as nursery:
            await nursery.start(server.serve_forever)
            for _ in range(3):
                async with await connect(server) as client:
                    await client.send_all(b"q" * REQUEST_SIZE)
                    await receive_until_eof(client)
            server.shutdown()
        families = {
            f.name: f for f in parser.text_string_to_metric_families(metrics_text(server).decode())
        }
    assert families["trioserve_connections"].samples[0].value == 3
    assert families["trioserve_bytes_sent"].samples[0].value == 3 * REPLY_SIZE


async def test_the_command_serves_metrics(tmp_path: Path) -> None:
    argv = trioserve("--tcp", "127.0.0.1:0", "--metrics", "127.0.0.1:0", "--workers", "2")
    async with run_command(argv, cwd=tmp_path) as command:
        line = await command.stdout.readline()
        assert line.startswith("trioserve: metrics on http://127.0.0.1:")
        url = line.split(" on ", 1)[1]
        assert await echo_tcp(command.address, b"hello") == b"hello"
        _, samples = await trio.to_thread.run_sync(scrape, url)
        assert "trioserve_connections_total" in samples
        assert "trioserve_handler_duration_seconds_count" in samples
        command.signal(signal.SIGTERM)
        assert await command.wait() == 0


async def test_metrics_without_the_extra_is_one_line(tmp_path: Path) -> None:
    # A prometheus_client that cannot be imported, as when the extra is not installed.
    (tmp_path / "prometheus_client.py").write_text("raise ImportError('not installed')\n")
    argv = trioserve("--tcp", "127.0.0.1:0", "--metrics", "127.0.0.1:0")
    async with run_command(argv, cwd=tmp_path, ready=False) as command:
        assert await command.wait() == 2
        err = await command.stderr.rest()
    expected = "--metrics needs prometheus-client: pip install 'trioserve[metrics]'"
    assert err == f"trioserve: {expected}\n"
