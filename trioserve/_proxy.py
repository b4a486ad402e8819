"""The PROXY protocol header (versions 1 and 2): parsing with no I/O at all.

A load balancer in TCP mode (HAProxy, nginx ``stream``, AWS NLB, stunnel, ...) connects to
the server itself, so the server sees the balancer's address, not the client's. With the
PROXY protocol the balancer sends one header before the connection's data, saying who the
client was. This module reads that header, as HAProxy's specification defines it
(``doc/proxy-protocol.txt``, "The PROXY protocol, Versions 1 & 2"); a server with
``proxy_protocol=True`` feeds the first bytes of each connection to a
`ProxyHeaderParser`, then serves the connection as the original client's.

Why no I/O
----------
Like `trioserve._buffer`, and h11 before it, the parser never reads from anything: it is
fed bytes and answers "a header", "need more" or "invalid". The server owns the socket, the
deadline and the logging; this module owns the rules, and the rules are tested with plain
bytes, chunked in every possible way, without a socket or an event loop. Nothing here
imports trio.

An empty chunk means end of stream, the way ``receive_some()`` says it, so the server's
loop is just::

    parser = ProxyHeaderParser()
    while (header := parser.feed(await stream.receive_some(CHUNK))) is None:
        pass
    data = parser.rest  # the first bytes of the real stream, read along with the header

Reading a chunk at a time may read past the header. Nothing is lost: `ProxyHeaderParser.rest`
returns the bytes after it, which the server hands to the handler before anything else.

Reject early
------------
The specification says that a receiver "MUST not try to guess whether the protocol header
is present" and that it is best to "abort the connection as soon as possible". So the
parser decides at the first byte that cannot be part of a valid header, without waiting
for a line end or a length:

* The first byte must be ``P`` (version 1, ``PROXY ...``) or ``\\r`` (the version 2
  signature ``\\r\\n\\r\\n\\x00\\r\\nQUIT\\n``). A plain client is refused at once: HTTP
  (``G`` of ``GET``), a TLS ClientHello (``\\x16``), SSH, SMTP... A server that waited for
  more would leave such a client hanging until the deadline.
* Every further byte of the version 1 signature, protocol word (``TCP4``, ``TCP6``,
  ``UNKNOWN``) and address characters, and of the version 2 signature, is checked as it
  arrives; so are the version 2 version/command and family bytes and its length, each as
  soon as it is there.

The converse holds too, and the tests check it: every strict prefix of a valid header
gives None ("need more"), never an error.

Limits
------
The bytes held while waiting for a header are bounded, so a peer cannot make the server
buffer without end, and a peer that trickles bytes is cut off by the size limit or the
server's deadline, whichever comes first:

* Version 1: at most 107 bytes including the CRLF (`MAX_V1_HEADER_SIZE`), the specification's
  worst case (``PROXY UNKNOWN`` followed by two full IPv6 addresses and two ports). A line
  without CRLF within 107 bytes is invalid, as the specification says.
* Version 2: the length field allows 16 + 65535 bytes, far more than any balancer sends
  (addresses take 12, 36 or 216 bytes; TLVs such as ALPN, SNI, a unique ID of at most 128
  bytes and SSL details add a few hundred). The parser refuses a header larger than
  `MAX_V2_HEADER_SIZE` (4096 bytes in all, so a length field of at most 4080) as soon as
  the length field arrives. ``max_v2_header_size`` raises or lowers it (at least 232
  bytes: the header of two Unix addresses).

What is accepted
----------------
Version 1 (one US-ASCII line): ``PROXY TCP4|TCP6 <src> <dst> <sport> <dport>\\r\\n``, with
exactly one space between fields; IPv4 addresses as four decimal numbers 0-255 without
leading zeros; IPv6 addresses as hexadecimal groups with at most one ``::`` (groups of 1-4
digits, as ``inet_ntop`` writes them, and a dotted IPv4 tail such as ``::ffff:1.2.3.4``;
no zone ``%eth0``); ports 0-65535 without leading zeros. ``PROXY UNKNOWN`` may be followed
by anything up to the CRLF, which is ignored. The line ends at its first CR, which must be
followed by LF.

Version 2 (binary): the 12-byte signature; version 2 with command LOCAL (0) or PROXY (1);
family UNSPEC, INET, INET6 or UNIX with transport UNSPEC, STREAM or DGRAM; the length;
then the addresses (12, 36 or 216 bytes) and TLVs, each a type byte, a 2-byte length and
the value, which must end exactly at the end of the header. A ``PP2_TYPE_CRC32C`` TLV is
verified. Which parts are read:

======================================  =================  ===========================
Header                                  Addresses          TLVs
======================================  =================  ===========================
LOCAL, any family                       ignored (local)    skipped, not parsed
PROXY, family UNSPEC                    none (local)       parsed from byte 16
PROXY, transport UNSPEC                 ignored (local)    skipped, not parsed
PROXY, INET/INET6/UNIX + STREAM/DGRAM   parsed             parsed after the addresses
======================================  =================  ===========================

A LOCAL header is a health check of the proxy's own: the specification says the receiver
"must accept this connection as valid" and discard the block, so nothing in the block can
make it fail (its version, command and family bytes are still checked, as for any header).
Where the family or transport is UNSPEC the receiver "should ignore address information";
the parser reports it as local, and the server keeps the real peer address.

Trusted proxies
---------------
The header is a claim, so only trusted peers may send it (`is_trusted`, with networks
normalised by `parse_networks`; `DEFAULT_TRUSTED` is loopback only). A peer on a Unix
socket is always trusted: only processes on the same host can connect to one, and the
socket file's permissions already say which.
"""

from __future__ import annotations

import ipaddress
import os
import re
import socket
import struct
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Final, TypeAlias, final

from ._exceptions import ProxyProtocolError

__all__ = [
    "DEFAULT_TRUSTED",
    "MAX_V1_HEADER_SIZE",
    "MAX_V2_HEADER_SIZE",
    "V2_SIGNATURE",
    "IPNetwork",
    "ProxyAddress",
    "ProxyHeader",
    "ProxyHeaderParser",
    "encode_v1",
    "encode_v2",
    "is_trusted",
    "parse_networks",
]

ProxyAddress: TypeAlias = tuple[str, int] | tuple[str, int, int, int] | str
"""An address as `socket` gives it: ``(host, port)``, ``(host, port, 0, 0)`` or a path."""

IPNetwork: TypeAlias = ipaddress.IPv4Network | ipaddress.IPv6Network
"""An IP network, as `parse_networks` returns them."""

DEFAULT_TRUSTED: Final = ("127.0.0.0/8", "::1/128")
"""The networks allowed to send a PROXY header when none are given: loopback only."""

MAX_V1_HEADER_SIZE: Final = 107
"""The longest version 1 header, CRLF included (the specification's worst case)."""

V2_SIGNATURE: Final = b"\r\n\r\n\x00\r\nQUIT\n"
"""The 12 bytes that begin every version 2 header."""

MAX_V2_HEADER_SIZE: Final = 4096
"""The default limit on a whole version 2 header: 16 fixed bytes, addresses and TLVs."""

_V1_SIGNATURE: Final = b"PROXY "
# What may follow b"PROXY ": the protocol word and the byte after it.
_V1_WORDS: Final = (b"TCP4 ", b"TCP6 ", b"UNKNOWN ", b"UNKNOWN\r")
# The bytes that may appear in the fields after b"TCP4 " / b"TCP6 " (before the CR).
_V1_FIELD_BYTES: Final = {4: b"0123456789. ", 6: b"0123456789abcdefABCDEF:. "}
_V1_PORT: Final = re.compile(rb"0|[1-9][0-9]{0,4}")
_V1_IPV4: Final = re.compile(rb"(?:0|[1-9][0-9]{0,2})(?:\.(?:0|[1-9][0-9]{0,2})){3}")
_V1_IPV6: Final = re.compile(rb"[0-9a-fA-F:.]+")

_V2_FIXED: Final = 16
_V2_LOCAL: Final = 0x0
_V2_PROXY: Final = 0x1
_V2_FAMILIES: Final = {
    0x0: None,
    0x1: socket.AF_INET,
    0x2: socket.AF_INET6,
    0x3: socket.AF_UNIX,
}
_V2_TRANSPORTS: Final = {0x0: None, 0x1: socket.SOCK_STREAM, 0x2: socket.SOCK_DGRAM}
_V2_ADDRESS_SIZES: Final = {0x1: 12, 0x2: 36, 0x3: 216}
_UNIX_PATH_SIZE: Final = 108
_MIN_V2_HEADER_SIZE: Final = _V2_FIXED + _V2_ADDRESS_SIZES[0x3]
_MAX_V2_LENGTH: Final = 0xFFFF
_PP2_TYPE_CRC32C: Final = 0x03


@final
@dataclass(frozen=True)
class ProxyHeader:
    """A PROXY protocol header, decoded.

    Attributes:
      version: 1 (the text line) or 2 (binary).
      local: True when the header carries no client address to use: a version 1
        ``UNKNOWN`` line, a version 2 LOCAL command (a proxy's health check), or a version 2
        PROXY command with an unspecified family or transport. The server then keeps the
        connection's real peer address.
      family: `socket.AF_INET`, `socket.AF_INET6` or `socket.AF_UNIX`; None when *local*.
      transport: `socket.SOCK_STREAM` (TCP, Unix stream) or `socket.SOCK_DGRAM` (UDP, Unix
        datagram) that the proxied connection used; None when *local*. Version 1 can only
        say TCP.
      source: the original client's address, in the form `socket` uses for *family*:
        ``(host, port)`` for IPv4, ``(host, port, 0, 0)`` for IPv6, the host written by
        ``inet_ntop`` exactly as ``getpeername()`` gives it (an IPv4-mapped address stays
        IPv6: ``::ffff:192.0.2.1``), the path for a Unix socket (``""`` for an unnamed
        one). None when *local*.
      destination: the address the client connected to, in the same form; None when
        *local*.
      tlvs: the version 2 TLVs in the order they came, as ``(type, value)`` pairs (the
        ``PP2_TYPE_*`` constants of the specification; SSL sub-TLVs stay inside their
        value). Empty for version 1 and for headers whose TLVs are skipped (see the module's
        table).
    """

    version: int
    local: bool
    family: socket.AddressFamily | None = None
    transport: socket.SocketKind | None = None
    source: ProxyAddress | None = None
    destination: ProxyAddress | None = None
    tlvs: tuple[tuple[int, bytes], ...] = ()


_V1_LOCAL: Final = ProxyHeader(version=1, local=True)
_V2_LOCAL_HEADER: Final = ProxyHeader(version=2, local=True)


@final
class ProxyHeaderParser:
    """An incremental parser of one PROXY protocol header, version 1 or 2.

    Feed it the first bytes of a connection, as they arrive, until it returns the header;
    then take the bytes after the header from `rest`. It never reads from anything, and
    holds at most the header itself plus whatever the last chunk brought along.

    Args:
      max_v2_header_size: the largest version 2 header accepted, in bytes, the 16 fixed
        bytes included; from 232 (two Unix addresses, no TLVs) to 65551.

    Raises:
      ValueError: *max_v2_header_size* is out of range.
      TypeError: *max_v2_header_size* is not an int.
    """

    __slots__ = ("_buffer", "_error", "_header", "_max_v2_header_size", "_rest")

    def __init__(self, *, max_v2_header_size: int = MAX_V2_HEADER_SIZE) -> None:
        if isinstance(max_v2_header_size, bool) or not isinstance(max_v2_header_size, int):
            raise TypeError(
                f"max_v2_header_size must be an int, not {type(max_v2_header_size).__name__}"
            )
        if not _MIN_V2_HEADER_SIZE <= max_v2_header_size <= _V2_FIXED + _MAX_V2_LENGTH:
            raise ValueError(
                f"max_v2_header_size must be from {_MIN_V2_HEADER_SIZE} to "
                f"{_V2_FIXED + _MAX_V2_LENGTH}, not {max_v2_header_size}"
            )
        self._max_v2_header_size = max_v2_header_size
        self._buffer = bytearray()
        self._header: ProxyHeader | None = None
        self._rest = b""
        self._error: str | None = None

    @property
    def header(self) -> ProxyHeader | None:
        """The header, once `feed` has returned it; None before."""
        return self._header

    @property
    def rest(self) -> bytes:
        """The bytes fed after the end of the header: the start of the real stream.

        Raises:
          RuntimeError: no complete header yet.
        """
        if self._header is None:
            raise RuntimeError("no complete PROXY header yet, so no bytes after it")
        return self._rest

    def feed(self, data: bytes | bytearray | memoryview) -> ProxyHeader | None:
        """Add the next bytes of the connection, and return the header once it is complete.

        Args:
          data: the next bytes received. Empty means the peer closed its side (what
            ``receive_some()`` returns at end of stream): without a complete header that is
            an error.

        Returns:
          The header, when these bytes complete it (any bytes after it go to `rest`); None
          when more bytes are needed to decide.

        Raises:
          ProxyProtocolError: the bytes so far cannot begin a valid header, the header is
            too large, or the stream ended first. Decided at the first byte that makes it
            certain. Once raised, every later call raises it again.
          RuntimeError: the header is complete already.
        """
        if self._header is not None:
            raise RuntimeError("the PROXY header is complete; the bytes after it are in .rest")
        if self._error is not None:
            raise ProxyProtocolError(self._error)
        try:
            if not data:
                raise ProxyProtocolError(
                    f"the connection closed after {len(self._buffer)} bytes, "
                    "before a complete PROXY header"
                )
            self._buffer += data
            found = self._parse()
        except ProxyProtocolError as exc:
            self._error = str(exc)
            self._buffer = bytearray()
            raise
        if found is None:
            return None
        header, size = found
        self._header = header
        self._rest = bytes(self._buffer[size:])
        self._buffer = bytearray()
        return header

    def _parse(self) -> tuple[ProxyHeader, int] | None:
        """Check the bytes buffered; return the header and its size once it is complete."""
        first = self._buffer[0]
        if first == _V1_SIGNATURE[0]:
            return self._parse_v1()
        if first == V2_SIGNATURE[0]:
            return self._parse_v2()
        raise ProxyProtocolError(
            f"not a PROXY protocol header: the connection starts with {bytes([first])!r}, "
            "neither b'PROXY' (version 1) nor the version 2 signature"
        )

    def _parse_v1(self) -> tuple[ProxyHeader, int] | None:
        # Bytes past the longest possible line cannot be part of it: look at no more.
        head = bytes(self._buffer[: MAX_V1_HEADER_SIZE + 1])
        cr = head.find(b"\r")
        line = head if cr < 0 else head[: cr + 1]  # up to and including the first CR
        _check_v1_start(line)
        if cr < 0:
            if len(head) >= MAX_V1_HEADER_SIZE:
                raise ProxyProtocolError(
                    f"PROXY version 1 line without CRLF within {MAX_V1_HEADER_SIZE} bytes"
                )
            return None
        if cr + 2 > MAX_V1_HEADER_SIZE:
            raise ProxyProtocolError(
                f"PROXY version 1 line longer than {MAX_V1_HEADER_SIZE} bytes"
            )
        if len(head) == cr + 1:
            return None
        if head[cr + 1] != 0x0A:
            raise ProxyProtocolError(
                f"PROXY version 1 line with a CR not followed by LF: {head[: cr + 2]!r}"
            )
        return _decode_v1(head[:cr]), cr + 2

    def _parse_v2(self) -> tuple[ProxyHeader, int] | None:
        buffer = self._buffer
        have = len(buffer)
        known = min(have, len(V2_SIGNATURE))
        if buffer[:known] != V2_SIGNATURE[:known]:
            raise ProxyProtocolError(
                "not a PROXY protocol header: it starts like the version 2 signature "
                f"but has {bytes(buffer[:known])!r}"
            )
        if have <= 12:
            return None
        version, command = divmod(buffer[12], 16)
        if version != 2:
            raise ProxyProtocolError(f"PROXY version 2 header with version {version}, not 2")
        if command not in (_V2_LOCAL, _V2_PROXY):
            raise ProxyProtocolError(f"PROXY version 2 header with unknown command {command}")
        if have == 13:
            return None
        family, transport = divmod(buffer[13], 16)
        if family not in _V2_FAMILIES:
            raise ProxyProtocolError(f"PROXY version 2 header with unknown family {family}")
        if transport not in _V2_TRANSPORTS:
            raise ProxyProtocolError(f"PROXY version 2 header with unknown transport {transport}")
        if have < _V2_FIXED:
            return None
        length = int.from_bytes(buffer[14:16], "big")
        size = _V2_FIXED + length
        if size > self._max_v2_header_size:
            raise ProxyProtocolError(
                f"PROXY version 2 header of {size} bytes, over the limit of "
                f"{self._max_v2_header_size}"
            )
        if command == _V2_PROXY and family and transport:
            needed = _V2_ADDRESS_SIZES[family]
            if length < needed:
                raise ProxyProtocolError(
                    f"PROXY version 2 header too short for its addresses: length {length}, "
                    f"{needed} needed for family {family}"
                )
        if have < size:
            return None
        return _decode_v2(bytes(buffer[:size]), command, family, transport), size


def _check_v1_start(line: bytes) -> None:
    """Raise unless *line* (a version 1 line so far, up to its first CR) can begin one."""
    known = min(len(line), len(_V1_SIGNATURE))
    if line[:known] != _V1_SIGNATURE[:known]:
        raise ProxyProtocolError(
            f"not a PROXY protocol header: it starts with {line[:known]!r}, not b'PROXY '"
        )
    word = line[len(_V1_SIGNATURE) :]
    if not any(word[: len(w)] == w[: len(word)] for w in _V1_WORDS):
        raise ProxyProtocolError(
            f"PROXY version 1 line with an unknown protocol: {line[:16]!r} "
            "(TCP4, TCP6 or UNKNOWN expected)"
        )
    if word[:3] == b"TCP" and len(word) > 5:
        fields = word[5:].rstrip(b"\r")
        bad = fields.translate(None, _V1_FIELD_BYTES[word[3] - 0x30])
        if bad:
            raise ProxyProtocolError(
                f"PROXY version 1 line with an unexpected byte {bad[:1]!r}: {line!r}"
            )
        if fields.startswith(b" ") or b"  " in fields:
            raise ProxyProtocolError(f"PROXY version 1 line with an empty field: {line!r}")
        if fields.count(b" ") > 3:
            raise ProxyProtocolError(f"PROXY version 1 line with too many fields: {line!r}")


def _decode_v1(line: bytes) -> ProxyHeader:
    """Decode a whole version 1 line, without its CRLF, that passed `_check_v1_start`."""
    if line.startswith(b"PROXY UNKNOWN"):
        # "the receiver must ignore anything presented before the CRLF is found".
        return _V1_LOCAL
    fields = line[len(b"PROXY TCP4 ") :].split(b" ")
    if len(fields) != 4:
        raise ProxyProtocolError(
            f"PROXY version 1 line needs 4 fields after the protocol, "
            f"each after one space: {line!r}"
        )
    source, destination, source_port, destination_port = fields
    ports = (_v1_port(source_port, line), _v1_port(destination_port, line))
    if line[9] == ord("4"):
        return ProxyHeader(
            version=1,
            local=False,
            family=socket.AF_INET,
            transport=socket.SOCK_STREAM,
            source=(_v1_ipv4(source, line), ports[0]),
            destination=(_v1_ipv4(destination, line), ports[1]),
        )
    return ProxyHeader(
        version=1,
        local=False,
        family=socket.AF_INET6,
        transport=socket.SOCK_STREAM,
        source=(_v1_ipv6(source, line), ports[0], 0, 0),
        destination=(_v1_ipv6(destination, line), ports[1], 0, 0),
    )


def _v1_port(field: bytes, line: bytes) -> int:
    if _V1_PORT.fullmatch(field) and int(field) <= 0xFFFF:
        return int(field)
    raise ProxyProtocolError(f"PROXY version 1 line with an invalid port {field!r}: {line!r}")


def _v1_ipv4(field: bytes, line: bytes) -> str:
    if _V1_IPV4.fullmatch(field):
        try:
            return socket.inet_ntop(
                socket.AF_INET, ipaddress.IPv4Address(field.decode("ascii")).packed
            )
        except ValueError:
            pass
    raise ProxyProtocolError(
        f"PROXY version 1 line with an invalid IPv4 address {field!r}: {line!r}"
    )


def _v1_ipv6(field: bytes, line: bytes) -> str:
    if _V1_IPV6.fullmatch(field):
        try:
            return socket.inet_ntop(
                socket.AF_INET6, ipaddress.IPv6Address(field.decode("ascii")).packed
            )
        except ValueError:
            pass
    raise ProxyProtocolError(
        f"PROXY version 1 line with an invalid IPv6 address {field!r}: {line!r}"
    )


def _decode_v2(header: bytes, command: int, family: int, transport: int) -> ProxyHeader:
    """Decode a whole version 2 header whose fixed 16 bytes `_parse_v2` checked."""
    if command == _V2_LOCAL:
        return _V2_LOCAL_HEADER
    if not family:
        return ProxyHeader(version=2, local=True, tlvs=_v2_tlvs(header, _V2_FIXED))
    if not transport:
        return _V2_LOCAL_HEADER
    block = header[_V2_FIXED:]
    source: ProxyAddress
    destination: ProxyAddress
    if family == 0x1:
        src, dst, src_port, dst_port = struct.unpack_from("!4s4sHH", block)
        source = (socket.inet_ntop(socket.AF_INET, src), src_port)
        destination = (socket.inet_ntop(socket.AF_INET, dst), dst_port)
    elif family == 0x2:
        src, dst, src_port, dst_port = struct.unpack_from("!16s16sHH", block)
        source = (socket.inet_ntop(socket.AF_INET6, src), src_port, 0, 0)
        destination = (socket.inet_ntop(socket.AF_INET6, dst), dst_port, 0, 0)
    else:
        source = _v2_unix_path(block[:_UNIX_PATH_SIZE], "source")
        destination = _v2_unix_path(block[_UNIX_PATH_SIZE : 2 * _UNIX_PATH_SIZE], "destination")
    return ProxyHeader(
        version=2,
        local=False,
        family=_V2_FAMILIES[family],
        transport=_V2_TRANSPORTS[transport],
        source=source,
        destination=destination,
        tlvs=_v2_tlvs(header, _V2_FIXED + _V2_ADDRESS_SIZES[family]),
    )


def _v2_unix_path(raw: bytes, which: str) -> str:
    end = raw.find(b"\x00")
    if end < 0:
        raise ProxyProtocolError(
            f"PROXY version 2 Unix {which} address without a NUL within {_UNIX_PATH_SIZE} bytes"
        )
    # Decoded as the socket module decodes AF_UNIX addresses.
    return os.fsdecode(raw[:end])


def _v2_tlvs(header: bytes, offset: int) -> tuple[tuple[int, bytes], ...]:
    """Split ``header[offset:]`` into TLVs, and verify a CRC32C TLV if there is one."""
    tlvs = []
    end = len(header)
    crc_at = -1
    while offset < end:
        if offset + 3 > end:
            raise ProxyProtocolError(
                f"PROXY version 2 header ends inside a TLV's type and length "
                f"({end - offset} bytes left)"
            )
        kind = header[offset]
        size = int.from_bytes(header[offset + 1 : offset + 3], "big")
        start = offset + 3
        offset = start + size
        if offset > end:
            raise ProxyProtocolError(
                f"PROXY version 2 TLV of type {kind:#04x} and {size} bytes overruns the "
                f"header by {offset - end} bytes"
            )
        if kind == _PP2_TYPE_CRC32C:
            if size != 4:
                raise ProxyProtocolError(f"PROXY version 2 CRC32C TLV of {size} bytes, not 4")
            if crc_at >= 0:
                raise ProxyProtocolError("PROXY version 2 header with two CRC32C TLVs")
            crc_at = start
        tlvs.append((kind, header[start:offset]))
    if crc_at >= 0:
        expected = int.from_bytes(header[crc_at : crc_at + 4], "big")
        actual = _crc32c(header[:crc_at] + bytes(4) + header[crc_at + 4 :])
        if actual != expected:
            raise ProxyProtocolError(
                f"PROXY version 2 header with a wrong CRC32C: {expected:#010x} given, "
                f"{actual:#010x} computed"
            )
    return tuple(tlvs)


def _crc32c_table() -> tuple[int, ...]:
    table = []
    for byte in range(256):
        crc = byte
        for _ in range(8):
            crc = (crc >> 1) ^ 0x82F63B78 if crc & 1 else crc >> 1
        table.append(crc)
    return tuple(table)


_CRC32C_TABLE: Final = _crc32c_table()


def _crc32c(data: bytes) -> int:
    """CRC32c (Castagnoli, RFC 4960 appendix B), as ``PP2_TYPE_CRC32C`` uses it."""
    crc = 0xFFFFFFFF
    table = _CRC32C_TABLE
    for byte in data:
        crc = table[(crc ^ byte) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


def parse_networks(
    networks: Iterable[str | IPNetwork | ipaddress.IPv4Address | ipaddress.IPv6Address],
) -> tuple[IPNetwork, ...]:
    """Normalise the networks allowed to send a PROXY header (``proxy_trusted=``).

    Args:
      networks: networks as strings (``"10.0.0.0/8"``, ``"2001:db8::/32"``, or one host:
        ``"192.0.2.7"``) or `ipaddress` networks or addresses. Host bits must be clear
        (``"10.0.0.1/8"`` is refused, as most likely a typo). An empty iterable trusts no
        IP peer at all.

    Returns:
      The networks, as `ipaddress.IPv4Network` and `ipaddress.IPv6Network` objects.

    Raises:
      TypeError: *networks* is a single string or bytes instead of a collection, or an
        entry is neither a string nor an `ipaddress` network or address. The message
        names the entry.
      ValueError: an entry is not a valid network. The message names the entry.
    """
    if isinstance(networks, (str, bytes, bytearray)):
        raise TypeError(
            f"proxy_trusted must be a collection of networks, not a single string: "
            f"write [{networks!r}]"
        )
    result: list[IPNetwork] = []
    for entry in networks:
        if isinstance(entry, (ipaddress.IPv4Network, ipaddress.IPv6Network)):
            result.append(entry)
        elif isinstance(entry, (str, ipaddress.IPv4Address, ipaddress.IPv6Address)):
            try:
                result.append(ipaddress.ip_network(entry))
            except ValueError as exc:
                raise ValueError(
                    f"proxy_trusted entry {entry!r} is not a network: {exc}"
                ) from None
        else:
            raise TypeError(
                f"proxy_trusted entry {entry!r} must be a string or an ipaddress network, "
                f"not {type(entry).__name__}"
            )
    return tuple(result)


def is_trusted(peer_address: object, networks: Iterable[IPNetwork]) -> bool:
    """Whether a peer may send a PROXY header.

    Args:
      peer_address: the connection's peer address as ``getpeername()`` gives it:
        ``(host, port)``, ``(host, port, flowinfo, scope_id)``, or for a Unix socket a path
        (`str`, `bytes` for Linux's abstract namespace, or empty for an unnamed peer).
      networks: the trusted networks, from `parse_networks`.

    Returns:
      True for an IP peer inside one of *networks*, an IPv4-mapped IPv6 peer
      (``::ffff:127.0.0.1``) being matched as its IPv4 address. True for any Unix socket
      peer: only processes on this host can connect to a Unix socket, and the socket
      file's permissions decide which. False for anything else, including an address
      that is not an IP address at all.
    """
    if isinstance(peer_address, (str, bytes, bytearray)):
        return True
    if not isinstance(peer_address, tuple) or not peer_address:
        return False
    host = peer_address[0]
    if not isinstance(host, str):
        return False
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return any(address in network for network in networks)


def _ip_pair(
    source: tuple[object, ...], destination: tuple[object, ...]
) -> tuple[ipaddress.IPv4Address | ipaddress.IPv6Address, ...]:
    """The hosts of two ``(host, port, ...)`` addresses, checked to be of one family."""
    hosts = []
    for address in (source, destination):
        if len(address) not in (2, 4) or not isinstance(address[0], str):
            raise ValueError(f"{address!r} is not a (host, port) address")
        port = address[1]
        if isinstance(port, bool) or not isinstance(port, int) or not 0 <= port <= 0xFFFF:
            raise ValueError(f"{address!r} has no port from 0 to 65535")
        hosts.append(ipaddress.ip_address(address[0].partition("%")[0]))
    if hosts[0].version != hosts[1].version:
        raise ValueError(f"{source!r} and {destination!r} are not of the same IP version")
    return tuple(hosts)


def encode_v1(
    source: tuple[str, int] | tuple[str, int, int, int] | None = None,
    destination: tuple[str, int] | tuple[str, int, int, int] | None = None,
) -> bytes:
    """Build a version 1 header, as a proxy would send it (for tests and clients).

    Args:
      source: the client's address, ``(host, port)`` or ``(host, port, flowinfo,
        scope_id)``; None with *destination* None for ``PROXY UNKNOWN``.
      destination: the address the client connected to, of the same IP version.

    Returns:
      The header line, CRLF included.

    Raises:
      ValueError: an address is not an IP address and port, or the two are of different
        IP versions, or only one of them is None.
    """
    if source is None and destination is None:
        return b"PROXY UNKNOWN\r\n"
    if source is None or destination is None:
        raise ValueError("give both source and destination, or neither")
    src, dst = _ip_pair(source, destination)
    family, protocol = (socket.AF_INET, "TCP4") if src.version == 4 else (socket.AF_INET6, "TCP6")
    hosts = [socket.inet_ntop(family, host.packed) for host in (src, dst)]
    return f"PROXY {protocol} {hosts[0]} {hosts[1]} {source[1]} {destination[1]}\r\n".encode()


def encode_v2(
    source: ProxyAddress | None = None,
    destination: ProxyAddress | None = None,
    *,
    tlvs: Iterable[tuple[int, bytes]] = (),
    crc32c: bool = False,
) -> bytes:
    """Build a version 2 header, as a proxy would send it (for tests and clients).

    Args:
      source: the client's address: ``(host, port)``, ``(host, port, flowinfo,
        scope_id)`` or a Unix socket path; None with *destination* None for a LOCAL header
        (a health check). The transport is always STREAM.
      destination: the address the client connected to, of the same kind.
      tlvs: ``(type, value)`` pairs to append after the addresses.
      crc32c: append a ``PP2_TYPE_CRC32C`` TLV holding the header's checksum.

    Returns:
      The header.

    Raises:
      ValueError: an address is invalid (a Unix path must encode to at most 107 bytes),
        the two are of different kinds, only one is None, a TLV type is not 0-255, or the
        header would be longer than the length field allows.
    """
    if source is None and destination is None:
        command, family, block = _V2_LOCAL, 0x0, b""
    elif source is None or destination is None:
        raise ValueError("give both source and destination, or neither")
    elif isinstance(source, str) and isinstance(destination, str):
        command, family = _V2_PROXY, 0x3
        paths = [os.fsencode(source), os.fsencode(destination)]
        if any(len(path) >= _UNIX_PATH_SIZE or b"\x00" in path for path in paths):
            raise ValueError(f"Unix paths must be under {_UNIX_PATH_SIZE} bytes, without NUL")
        block = b"".join(path.ljust(_UNIX_PATH_SIZE, b"\x00") for path in paths)
    elif isinstance(source, tuple) and isinstance(destination, tuple):
        src, dst = _ip_pair(source, destination)
        command, family = _V2_PROXY, 0x1 if src.version == 4 else 0x2
        block = src.packed + dst.packed + struct.pack("!HH", source[1], destination[1])
    else:
        raise ValueError(f"{source!r} and {destination!r} are not of the same kind")
    for kind, value in tlvs:
        if not 0 <= kind <= 0xFF or len(value) > _MAX_V2_LENGTH:
            raise ValueError(f"invalid TLV of type {kind!r} and {len(value)} bytes")
        block += struct.pack("!BH", kind, len(value)) + bytes(value)
    if crc32c:
        block += struct.pack("!BH", _PP2_TYPE_CRC32C, 4) + bytes(4)
    if len(block) > _MAX_V2_LENGTH:
        raise ValueError(f"a version 2 header holds at most {_MAX_V2_LENGTH} bytes after 16")
    transport = 0x1 if family else 0x0
    header = V2_SIGNATURE + struct.pack(
        "!BBH", 0x20 | command, family << 4 | transport, len(block)
    )
    header += block
    if crc32c:
        header = header[:-4] + _crc32c(header).to_bytes(4, "big")
    return header
