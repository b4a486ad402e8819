"""The process pool's wire protocol: frames on the control socket. No I/O.

The pool's parent (`trioserve._pool`) and each worker (`trioserve._worker`) talk over a
socket pair. Everything either side sends is a *frame*: a 4-byte big-endian length, then a
pickle of a tuple ``(kind, *args)``. This module only turns messages into bytes and bytes
into messages (`encode_frame`, `FrameBuffer`), so it is tested with plain bytes, and both
sides share one definition of the protocol:

=============  =========  ==========================================================
kind           direction  arguments
=============  =========  ==========================================================
``setup``      to worker  a dict: ``sys_path``, ``main``, logging levels
``spec``       to worker  a pickled `WorkerSpec`
``stop``       to worker  the grace period (seconds or None), and whether to serve the
                          connections still queued (the pool stops) or leave them to
                          the workers that go on (a reload replaced this one)
``ready``      to parent  (none): the worker accepts requests
``failed``     to parent  the error text, and whether retrying is pointless
``log``        to parent  a log record's attributes (plain values)
``shutdown``   to parent  a grace period: a handler called ``server.shutdown()``
``reload``     to parent  (none): a handler called ``server.reload_workers()``
``stats``      to parent  the worker's figures, a `~trioserve.WorkerStatistics`: on
                          change, at most every half second, and as it stops
=============  =========  ==========================================================
"""

from __future__ import annotations

import pickle
import struct
from collections.abc import Iterator, Mapping
from typing import Any, NamedTuple

__all__ = [
    "EXIT_MARGIN",
    "HEADER",
    "MAX_FRAME_SIZE",
    "FrameBuffer",
    "FrameError",
    "WorkerSpec",
    "check_size",
    "decode_payload",
    "encode_frame",
]

#: Frames are a 4-byte big-endian length, then a pickle of a tuple ``(kind, *args)``.
HEADER = struct.Struct("!I")
#: The largest frame either side accepts (a spec with big attributes, a long traceback).
MAX_FRAME_SIZE = 256 * 1024 * 1024
#: How long, after its grace period, a worker may take to finish stopping.
EXIT_MARGIN = 5.0


#: True while a worker imports the parent's ``__main__``: no server may start then (the
#: worker's side sets it; the pool refuses to start while it is set).
importing_main = False


class FrameError(Exception):
    """The other side of a control socket sent something that is not a frame."""


class WorkerSpec(NamedTuple):
    """What a worker needs to rebuild the server. Pickled by the parent.

    Attributes:
      server_class: the server's class, rebuilt with its ``from_socket``.
      handler_class: the server's ``RequestHandlerClass``.
      options: every constructor option of the server class, with the parent's values.
      attributes: the parent server's other public instance attributes.
    """

    server_class: type[Any]
    handler_class: Any
    options: Mapping[str, Any]
    attributes: Mapping[str, Any]


def encode_frame(message: tuple[Any, ...]) -> bytes:
    """One frame holding *message*."""
    data = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
    return HEADER.pack(len(data)) + data


def decode_payload(payload: bytes) -> tuple[Any, ...]:
    """The message in one frame's payload.

    Raises:
      FrameError: the payload does not unpickle, or is not a ``(kind, ...)`` tuple.
    """
    try:
        message = pickle.loads(payload)
    except Exception as exc:
        raise FrameError(f"a frame could not be read: {exc!r}") from exc
    if not isinstance(message, tuple) or not message or not isinstance(message[0], str):
        raise FrameError(f"a frame holds {type(message).__name__}, not a message")
    return message


def check_size(size: int) -> None:
    """Refuse a frame length beyond `MAX_FRAME_SIZE` (a corrupt or hostile stream)."""
    if size > MAX_FRAME_SIZE:
        raise FrameError(f"a frame of {size} bytes is too large")


class FrameBuffer:
    """Cuts a byte stream into messages. No I/O: feed it what was received."""

    def __init__(self) -> None:
        self._buffer = bytearray()

    def feed(self, data: bytes) -> Iterator[tuple[Any, ...]]:
        """Add *data*; yield every message now complete.

        Raises:
          FrameError: a length beyond `MAX_FRAME_SIZE`, or a payload that is not a message.
        """
        self._buffer += data
        while len(self._buffer) >= HEADER.size:
            (size,) = HEADER.unpack_from(self._buffer)
            check_size(size)
            end = HEADER.size + size
            if len(self._buffer) < end:
                return
            payload = bytes(self._buffer[HEADER.size : end])
            del self._buffer[:end]
            yield decode_payload(payload)

    @property
    def pending(self) -> int:
        """How many bytes of an incomplete frame are held."""
        return len(self._buffer)
