"""What every benchmark process shares: the wire format, the backlog, /proc readings.

The HTTP contenders all answer the same "hello world": they read the request line and the
header lines up to the blank line, then send `RESPONSE` (a 12-byte body) and wait for the
next request on the connection; a request that asks to close (HTTP/1.0, or a
``Connection: close`` header) gets `RESPONSE_CLOSE`, and the server closes the connection.
Every server listens with the same backlog, `BACKLOG`, so no contender is refused
connections another would queue.
"""

from __future__ import annotations

import os
import resource

__all__ = [
    "BACKLOG",
    "BODY",
    "HOST",
    "REQUEST",
    "RESPONSE",
    "RESPONSE_CLOSE",
    "children_of",
    "raise_open_file_limit",
    "rss_kib",
    "thread_count",
]

#: Every contender listens on loopback only.
HOST = "127.0.0.1"
#: The listen backlog of every contender (trioserve's default; Linux caps it at somaxconn).
BACKLOG = 4096
#: The body of every answer: 12 bytes.
BODY = b"Hello world\n"
#: The answer of the hand-written servers (http.server adds Server and Date headers).
RESPONSE = (
    b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: %d\r\n\r\n" % len(BODY) + BODY
)
#: The same answer to a request that asked to close (HTTP/1.0, or ``Connection: close``);
#: the server then closes the connection.
RESPONSE_CLOSE = (
    b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nConnection: close\r\n"
    b"Content-Length: %d\r\n\r\n" % len(BODY) + BODY
)
#: What the memory client sends on each connection (wrk sends much the same).
REQUEST = b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"


def raise_open_file_limit(wanted: int) -> int:
    """Raise this process's soft RLIMIT_NOFILE towards *wanted*, within the hard limit.

    Returns:
      The soft limit now in force.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if target > soft:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        soft = target
    return soft


def _status_field(pid: int, field: str) -> int:
    with open(f"/proc/{pid}/status", encoding="ascii") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise LookupError(f"no {field} in /proc/{pid}/status")


def rss_kib(pid: int) -> int:
    """The resident set size of process *pid*, in KiB."""
    return _status_field(pid, "VmRSS")


def thread_count(pid: int) -> int:
    """How many threads process *pid* has."""
    return _status_field(pid, "Threads")


def children_of(pid: int) -> list[int]:
    """The child processes of *pid* (Linux: /proc/PID/task/*/children)."""
    found: list[int] = []
    for task in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{task}/children", encoding="ascii") as children:
                found.extend(int(child) for child in children.read().split())
        except FileNotFoundError:
            continue
    return found
