"""Sync handlers: socketserver code, unchanged, in worker threads.

A handler whose ``handle`` is a plain ``def`` (and any handler class of the standard
library's ``socketserver``, or any other callable given as ``RequestHandlerClass``)
blocks: ``self.request.recv(1024)`` waits for the peer. It runs in a worker thread,
``setup`` to ``finish``, while the Trio task that owns the request waits for it.

This module is an adapter over the one request path, not a second server: the request
still goes through the server's hooks (``verify_request``, ``process_request``,
``shutdown_request``...), and the handler's life is the same steps as an async handler's
(`trioserve._handlers.handler_steps`), driven in the thread. What the adapter adds is the
request a blocking handler can use, and the thread:

* a plain `trio.SocketStream` (TCP, Unix) becomes a real, blocking `socket.socket` on a
  duplicate of its descriptor (`trioserve._threads.ThreadSocket`): every method of a
  socket works (``recv``, ``sendall``, ``makefile``, ``settimeout``, ``sendfile``...) at
  socketserver's speed, with ``TCP_NODELAY`` still on. Cancelling the handler shuts the
  connection down, which wakes the thread;
* any other stream (`trio.SSLStream`, a user's own) becomes a `StreamSocket`;
* a datagram request ``(data, socket)`` gets a blocking socket on the server's socket
  (shared: it stays non-blocking underneath, as the server keeps receiving on it);
* anything else is passed through.

The blocking socket is made in the thread, once a thread is free: a request waiting for
a thread holds no descriptor of its own. A server's ``handler_timeout`` becomes the
socket's timeout before the handler runs (socketserver's own handler classes set theirs
in their constructor, over it, if their ``timeout`` is not None).
"""

from __future__ import annotations

import socket
from typing import Any

import trio

from ._handlers import HandlerClass, handler_steps, run_steps_sync
from ._streamsocket import StreamSocket
from ._threads import ThreadSocket, run_in_handler_thread

__all__ = ["run_sync_handler"]


async def run_sync_handler(
    handler_class: HandlerClass, request: Any, client_address: Any, server: Any
) -> None:
    """Run a sync handler (or a socketserver handler class) for one request, in a thread.

    The handler gets a blocking, socket-like ``request`` (see the module documentation);
    ``setup``, ``handle`` and ``finish`` run in a worker thread, ``finish`` even when
    ``handle`` raised, at most ``server.max_handler_threads`` at once.

    Args:
      handler_class: a trioserve handler class with a plain-``def`` ``handle``, a
        subclass of ``socketserver.BaseRequestHandler``, or another callable.
      request: the request as the server received it: a Trio stream, or a datagram
        ``(data, socket)``.
      client_address: the peer's address.
      server: the server.

    Raises:
      Exception: whatever the handler raised, for the server's ``handle_error``.

    Resource handling:
      A socket given to the handler is closed when the handler returns; *request* itself
      stays open, for the server to shut down and close.
    """
    limit: int | None = server.max_handler_threads
    timeout: float | None = getattr(server, "handler_timeout", None)

    def run(blocking_request: Any) -> None:
        run_steps_sync(handler_steps(handler_class, blocking_request, client_address, server))

    def run_on(trio_sock: trio.socket.SocketType, *, exclusive: bool, data: Any = None) -> None:
        sock = ThreadSocket.duplicate(trio_sock, exclusive=exclusive)
        try:
            if timeout is not None:
                sock.settimeout(timeout)
            run(sock if exclusive else (data, sock))
        finally:
            sock.release()

    if isinstance(request, trio.SocketStream):
        trio_sock = request.socket

        def shut_down() -> None:
            try:
                trio_sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass  # not connected any more: the handler's calls return already

        await run_in_handler_thread(
            server, limit, lambda: run_on(trio_sock, exclusive=True), shut_down
        )
    elif isinstance(request, trio.abc.Stream):
        view = StreamSocket(request, trio.lowlevel.current_trio_token())
        if timeout is not None:
            view.settimeout(timeout)
        await run_in_handler_thread(server, limit, lambda: run(view), view.cancel)
    elif _is_datagram(request):
        data, trio_sock = request
        await run_in_handler_thread(
            server, limit, lambda: run_on(trio_sock, exclusive=False, data=data), _nothing
        )
    else:
        await run_in_handler_thread(server, limit, lambda: run(request), _nothing)


def _is_datagram(request: Any) -> bool:
    return (
        type(request) is tuple
        and len(request) == 2
        and isinstance(request[1], trio.socket.SocketType)
    )


def _nothing() -> None:
    return None
