"""Socket activation: listening sockets handed over by systemd (or any supervisor).

With socket activation the supervisor binds the sockets, then starts the service with
them already open as file descriptors 3, 4, ... and says how many in the environment:

* ``LISTEN_FDS``: how many descriptors, starting at ``SD_LISTEN_FDS_START`` (3);
* ``LISTEN_PID``: the process they are meant for. A process that inherits the
  environment (a child of the service) must not take them too, so descriptors are only
  returned when ``LISTEN_PID`` is this process;
* ``LISTEN_FDNAMES``: optional names, from ``FileDescriptorName=``.

`listen_fds` reads them as ``sd_listen_fds(3)`` does, without linking to libsystemd: it
marks the descriptors close-on-exec and, by default, removes the variables from the
environment, so that they are taken once. Build servers from the result with
`~trioserve.SocketServer.from_fd`::

    [fd] = trioserve.listen_fds()
    server = trioserve.ThreadingTCPServer.from_fd(fd, Handler)

A restart of the service then never drops a connection: the socket stays bound and
listening in the supervisor while the service is down, and connections wait in its
backlog.
"""

from __future__ import annotations

import os

__all__ = ["SD_LISTEN_FDS_START", "listen_fds"]

#: The first descriptor of socket activation; the others follow it.
SD_LISTEN_FDS_START = 3

_VARIABLES = ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES")


def listen_fds(unset_environment: bool = True) -> list[int]:
    """The listening sockets passed by systemd socket activation, as file descriptors.

    Reads ``LISTEN_PID`` and ``LISTEN_FDS`` as ``sd_listen_fds(3)`` does. Hand each
    descriptor to `~trioserve.SocketServer.from_fd` (of a class of the socket's type).

    Args:
      unset_environment: remove ``LISTEN_PID``, ``LISTEN_FDS`` and ``LISTEN_FDNAMES``
        from `os.environ` (the default), so that the processes this one starts do not
        see them and a second call returns nothing.

    Returns:
      The descriptors, in order (``[3, 4, ...]``); an empty list when the process was not
      socket-activated, or when ``LISTEN_PID`` names another process (the variables were
      inherited, not meant for this one).

    Raises:
      ValueError: ``LISTEN_PID`` or ``LISTEN_FDS`` is not a number, or ``LISTEN_FDS``
        names a descriptor that is not open. The message names the variable.

    Resource handling:
      Each descriptor returned is marked close-on-exec, so the processes this one starts
      do not inherit it; the caller owns the descriptors (``from_fd`` takes them over).
    """
    try:
        pid_text = os.environ.get("LISTEN_PID")
        if pid_text is None:
            return []
        pid = _number("LISTEN_PID", pid_text)
        if pid != os.getpid():
            return []
        count = _number("LISTEN_FDS", os.environ.get("LISTEN_FDS", "0"))
        fds = list(range(SD_LISTEN_FDS_START, SD_LISTEN_FDS_START + count))
        for fd in fds:
            try:
                os.set_inheritable(fd, False)
            except OSError as exc:
                raise ValueError(
                    f"LISTEN_FDS={count} names file descriptor {fd}, which is not open "
                    f"({exc.strerror})"
                ) from None
        return fds
    finally:
        if unset_environment:
            for name in _VARIABLES:
                os.environ.pop(name, None)


def _number(name: str, text: str) -> int:
    try:
        value = int(text.strip())
    except ValueError:
        value = -1
    if value < 0:
        raise ValueError(f"{name}={text!r} is not a number of the form socket activation uses")
    return value
