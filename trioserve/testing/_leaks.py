"""What a serving run may leave behind: file descriptors, Trio tasks, threads.

`ResourceSnapshot.take` records what exists when `~trioserve.testing.serving` starts a
server; `ResourceSnapshot.leaks_since` compares that with what exists once the server has
stopped, and describes every difference in words a test failure can show.

What counts as left behind
--------------------------
A server that stopped cleanly has closed every connection it accepted, ended every
handler task and let every worker thread go back to Trio's idle cache. So each check
looks only for what appeared during the block and is still there at the end:

* **File descriptors** (from ``/proc/self/fd``; where there is no such directory, as on
  macOS, this check is skipped). The client ends of connections *to this server* are not
  counted: they belong to the test, which often keeps one open past the end of the block
  to see the server close its side. Every other new descriptor is: a server-side
  connection left open, a file a handler opened and never closed, a socket the test
  opened inside the block and forgot.
* **Trio tasks** in the subtree of the task that entered the block (tasks a handler or
  the test spawned into an outer nursery and that still run). Tasks elsewhere in the run,
  such as other fixtures' tasks in a pytest-trio session, are not this server's, and
  neither are the tasks of another server still serving (a server's request tasks wait
  for its next request once theirs is done): the task serving it counts, what it runs
  does not.
* **Threads** that are busy: alive and not one of Trio's idle cached worker threads. Trio
  keeps a worker thread for a few seconds after its job ends, waiting for the next job;
  such an idle thread is not a leak. Trio names a cached worker ``Trio thread N`` while it
  is idle, and after its job while it runs one that has a name; trioserve names its sync
  handlers' jobs, as `trio.to_thread.run_sync` names its own, so a thread of that name is
  idle (Trio gives the name back before it hands back the result, so there is no race
  with the task that waited for it). No private part of Trio is read. A thread that was
  busy already when the block started is not counted.
"""

from __future__ import annotations

import os
import re
import socket
import threading
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import trio

from .._serving import serving_tasks

__all__ = ["ResourceSnapshot"]

_FD_DIR = "/proc/self/fd"
_IDLE_TRIO_WORKER = re.compile(r"Trio thread \d+")
_WILDCARD_HOSTS = frozenset({"", "0.0.0.0", "::"})


def _open_fds() -> frozenset[int] | None:
    """The descriptors open now, or None where the system does not list them."""
    try:
        names = os.listdir(_FD_DIR)
    except OSError:
        return None
    # The descriptor of the listing itself is in the list and closed already.
    return frozenset(int(name) for name in names if os.path.exists(f"{_FD_DIR}/{name}"))


def _subtree(task: trio.lowlevel.Task) -> Iterator[trio.lowlevel.Task]:
    """The tasks below *task*, except those below a task that serves a server (its
    handler tasks, and those waiting for a request, are that server's)."""
    serving = serving_tasks()
    below = [task]
    while below:
        for nursery in below.pop().child_nurseries:
            for child in nursery.child_tasks:
                yield child
                if child not in serving:
                    below.append(child)


def _busy_threads() -> frozenset[threading.Thread]:
    # Trio names a cached worker thread "Trio thread N" while it is idle, and after the
    # job it runs while it runs one with a name (trioserve's sync handlers and
    # trio.to_thread.run_sync name theirs), so a thread of that name is idle.
    return frozenset(
        thread
        for thread in threading.enumerate()
        if thread.is_alive() and not _IDLE_TRIO_WORKER.fullmatch(thread.name)
    )


def _fd_target(fd: int) -> str:
    try:
        return os.readlink(f"{_FD_DIR}/{fd}")
    except OSError:
        return "?"


def _socket_addresses(fd: int, target: str) -> tuple[Any, Any] | None:
    """``(local, peer)`` of the socket *fd* (peer None when unconnected), without owning it."""
    if not target.startswith("socket:"):
        return None
    try:
        sock = socket.socket(fileno=fd)
    except OSError:
        return None
    try:
        local = sock.getsockname()
        try:
            peer = sock.getpeername()
        except OSError:
            peer = None
        return local, peer
    except OSError:
        return None
    finally:
        sock.detach()  # the descriptor stays open: it is not ours to close


def _same_address(peer: Any, server_address: Any) -> bool:
    """Whether *peer* is *server_address*, a wildcard host matching any host."""
    if isinstance(peer, tuple) and isinstance(server_address, tuple):
        if len(peer) < 2 or len(server_address) < 2 or peer[1] != server_address[1]:
            return False
        return bool(server_address[0] in _WILDCARD_HOSTS or peer[0] == server_address[0])
    if isinstance(peer, (str, bytes)) and isinstance(server_address, (str, bytes, os.PathLike)):
        return bool(peer) and os.fsencode(peer) == os.fsencode(server_address)
    return False


def _describe_fd(fd: int, target: str, addresses: tuple[Any, Any] | None) -> str:
    if addresses is None:
        return f"fd {fd} ({target})"
    local, peer = addresses
    if peer is None:
        return f"fd {fd} ({target}, {local!r}, not connected)"
    return f"fd {fd} ({target}, {local!r} -> {peer!r})"


def _count(number: int, noun: str) -> str:
    return f"{number} {noun}" if number == 1 else f"{number} {noun}s"


@dataclass(frozen=True)
class ResourceSnapshot:
    """The descriptors, tasks and threads that exist at one moment.

    Attributes:
      fds: the open file descriptors; None where the system does not list them.
      task: the Trio task that took the snapshot.
      tasks: the tasks in that task's subtree.
      threads: the threads that are busy (not idle in Trio's cache).
    """

    fds: frozenset[int] | None
    task: trio.lowlevel.Task
    tasks: frozenset[trio.lowlevel.Task]
    threads: frozenset[threading.Thread]

    @classmethod
    def take(cls, task: trio.lowlevel.Task | None = None) -> ResourceSnapshot:
        """Record what exists now. Call it in a Trio run.

        Args:
          task: whose subtree of tasks to watch; by default the calling task.
        """
        if task is None:
            task = trio.lowlevel.current_task()
        return cls(_open_fds(), task, frozenset(_subtree(task)), _busy_threads())

    def leaks_since(self, server_addresses: Iterable[Any] = ()) -> list[str]:
        """Describe what appeared since this snapshot and still exists, one line per kind.

        Args:
          server_addresses: the addresses of the servers that were served; sockets
            connected to one of them (the clients' ends) are not counted.

        Returns:
          An empty list when nothing was left behind.
        """
        servers = list(server_addresses)
        found: list[str] = []
        now_fds = _open_fds()
        if self.fds is not None and now_fds is not None:
            fds: list[str] = []
            for fd in sorted(now_fds - self.fds):
                target = _fd_target(fd)
                addresses = _socket_addresses(fd, target)
                if addresses is not None and any(
                    _same_address(addresses[1], server) for server in servers
                ):
                    continue  # a client's end: the test's to close
                fds.append(_describe_fd(fd, target, addresses))
            if fds:
                found.append(f"{_count(len(fds), 'file descriptor')}: {', '.join(fds)}")
        tasks = sorted(task.name for task in set(_subtree(self.task)) - self.tasks)
        if tasks:
            found.append(f"{_count(len(tasks), 'Trio task')}: {', '.join(tasks)}")
        threads = sorted(thread.name for thread in _busy_threads() - self.threads)
        if threads:
            found.append(f"{_count(len(threads), 'busy thread')}: {', '.join(threads)}")
        return found
