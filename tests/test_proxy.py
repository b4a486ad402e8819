"""The PROXY protocol parser, with plain bytes.

The valid headers here are built from the specification's text (HAProxy's
``doc/proxy-protocol.txt``) by the helpers below, not by the module's encoders, so that a
mistake shared by the parser and its encoders cannot hide.
"""

from __future__ import annotations

import ipaddress
import itertools
import os
import socket

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from trioserve._exceptions import ProxyProtocolError
from trioserve._proxy import (
    DEFAULT_TRUSTED,
    MAX_V1_HEADER_SIZE,
    MAX_V2_HEADER_SIZE,
    ProxyHeader,
    ProxyHeaderParser,
    encode_v1,
    encode_v2,
    is_trusted,
    parse_networks,
)

# The version 2 signature, byte by byte as section 2.2 lists it.
SIGNATURE = bytes([0x0D, 0x0A, 0x0D, 0x0A, 0x00, 0x0D, 0x0A, 0x51, 0x55, 0x49, 0x54, 0x0A])
LOCAL, PROXY = 0x20, 0x21  # version 2 in the high nibble, the command in the low one
TCP4, UDP4, TCP6, UDP6, UNIX_STREAM, UNIX_DGRAM = 0x11, 0x12, 0x21, 0x22, 0x31, 0x32
CRC32C = 0x03

bounded = settings(max_examples=200, deadline=None)


def v2(ver_cmd: int, fam: int, body: bytes) -> bytes:
    """A version 2 header: signature, the two bytes, the length, then *body*."""
    return SIGNATURE + bytes([ver_cmd, fam]) + len(body).to_bytes(2, "big") + body


def tlv(kind: int, value: bytes) -> bytes:
    return bytes([kind]) + len(value).to_bytes(2, "big") + value


def crc32c(data: bytes) -> int:
    """CRC32c bit by bit (RFC 4960 appendix B), unlike the module's table."""
    crc = 0xFFFFFFFF
    for byte in data:
        crc ^= byte
        for _ in range(8):
            crc = (crc >> 1) ^ (0x82F63B78 * (crc & 1))
    return crc ^ 0xFFFFFFFF


def with_crc(ver_cmd: int, fam: int, body: bytes) -> bytes:
    """A version 2 header whose last TLV is a correct CRC32C."""
    header = v2(ver_cmd, fam, body + tlv(CRC32C, bytes(4)))
    return header[:-4] + crc32c(header).to_bytes(4, "big")


def ntop(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> str:
    """The host as getpeername() writes it."""
    family = socket.AF_INET if address.version == 4 else socket.AF_INET6
    return socket.inet_ntop(family, address.packed)


def parse(data: bytes) -> tuple[ProxyHeader, bytes]:
    parser = ProxyHeaderParser()
    header = parser.feed(data)
    assert header is not None
    return header, parser.rest


def rejects(data: bytes, match: str = "") -> None:
    with pytest.raises(ProxyProtocolError, match=match):
        ProxyHeaderParser().feed(data)


# --- Strategies: a valid header and the ProxyHeader it means -------------------------------

ports = st.integers(0, 0xFFFF)
ipv4 = st.ip_addresses(v=4)
ipv6 = st.ip_addresses(v=6)
tlv_lists = st.lists(
    st.tuples(st.integers(0, 0xFF).filter(lambda kind: kind != CRC32C), st.binary(max_size=40)),
    max_size=4,
)

Case = tuple[bytes, ProxyHeader]


@st.composite
def v1_tcp4(draw: st.DrawFn) -> Case:
    src, dst = draw(ipv4), draw(ipv4)
    sport, dport = draw(ports), draw(ports)
    line = f"PROXY TCP4 {src} {dst} {sport} {dport}\r\n".encode()
    return line, ProxyHeader(
        version=1,
        local=False,
        family=socket.AF_INET,
        transport=socket.SOCK_STREAM,
        source=(str(src), sport),
        destination=(str(dst), dport),
    )


@st.composite
def v1_tcp6(draw: st.DrawFn) -> Case:
    src, dst = draw(ipv6), draw(ipv6)
    sport, dport = draw(ports), draw(ports)
    # The specification's 4-digit groups, the compressed form, or either in upper case.
    style = draw(st.sampled_from(["exploded", "compressed", "upper", "ntop"]))

    def text(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> str:
        if style == "exploded":
            return address.exploded
        if style == "upper":
            return address.compressed.upper()
        if style == "ntop":  # inet_ntop: "::ffff:1.2.3.4" for a mapped address
            return ntop(address)
        return address.compressed

    line = f"PROXY TCP6 {text(src)} {text(dst)} {sport} {dport}\r\n".encode()
    return line, ProxyHeader(
        version=1,
        local=False,
        family=socket.AF_INET6,
        transport=socket.SOCK_STREAM,
        source=(ntop(src), sport, 0, 0),
        destination=(ntop(dst), dport, 0, 0),
    )


@st.composite
def v1_unknown(draw: st.DrawFn) -> Case:
    # "the receiver must ignore anything presented before the CRLF is found"
    tail = draw(st.none() | st.binary(max_size=MAX_V1_HEADER_SIZE - 16))
    line = b"PROXY UNKNOWN"
    if tail is not None:
        line += b" " + tail.replace(b"\r", b"")
    return line + b"\r\n", ProxyHeader(version=1, local=True)


@st.composite
def v2_ip(draw: st.DrawFn) -> Case:
    fam = draw(st.sampled_from([TCP4, UDP4, TCP6, UDP6]))
    addresses = ipv4 if fam in (TCP4, UDP4) else ipv6
    src, dst = draw(addresses), draw(addresses)
    sport, dport = draw(ports), draw(ports)
    tlvs = draw(tlv_lists)
    body = src.packed + dst.packed + sport.to_bytes(2, "big") + dport.to_bytes(2, "big")
    body += b"".join(tlv(kind, value) for kind, value in tlvs)
    v4 = fam in (TCP4, UDP4)
    return v2(PROXY, fam, body), ProxyHeader(
        version=2,
        local=False,
        family=socket.AF_INET if v4 else socket.AF_INET6,
        transport=socket.SOCK_STREAM if fam in (TCP4, TCP6) else socket.SOCK_DGRAM,
        source=(ntop(src), sport) if v4 else (ntop(src), sport, 0, 0),
        destination=(ntop(dst), dport) if v4 else (ntop(dst), dport, 0, 0),
        tlvs=tuple(tlvs),
    )


unix_paths = st.binary(max_size=107).map(lambda path: path.replace(b"\x00", b""))


@st.composite
def unix_field(draw: st.DrawFn) -> tuple[bytes, str]:
    """108 bytes: a path, its NUL, and any padding after it."""
    path = draw(unix_paths)
    padding = draw(st.binary(min_size=107 - len(path), max_size=107 - len(path)))
    return path + b"\x00" + padding, os.fsdecode(path)


@st.composite
def v2_unix(draw: st.DrawFn) -> Case:
    fam = draw(st.sampled_from([UNIX_STREAM, UNIX_DGRAM]))
    (src, src_path), (dst, dst_path) = draw(unix_field()), draw(unix_field())
    tlvs = draw(tlv_lists)
    body = src + dst + b"".join(tlv(kind, value) for kind, value in tlvs)
    return v2(PROXY, fam, body), ProxyHeader(
        version=2,
        local=False,
        family=socket.AF_UNIX,
        transport=socket.SOCK_STREAM if fam == UNIX_STREAM else socket.SOCK_DGRAM,
        source=src_path,
        destination=dst_path,
        tlvs=tuple(tlvs),
    )


valid_fam_bytes = st.sampled_from(
    [family << 4 | transport for family in range(4) for transport in range(3)]
)


@st.composite
def v2_local(draw: st.DrawFn) -> Case:
    # LOCAL: "discard the protocol block including the family", whatever it holds.
    body = draw(st.binary(max_size=300))
    return v2(LOCAL, draw(valid_fam_bytes), body), ProxyHeader(version=2, local=True)


@st.composite
def v2_unspecified(draw: st.DrawFn) -> Case:
    fam = draw(st.sampled_from([0x00, 0x01, 0x02, 0x10, 0x20, 0x30]))
    if fam >> 4 == 0:  # no address block: TLVs from byte 16
        tlvs = draw(tlv_lists)
        body = b"".join(tlv(kind, value) for kind, value in tlvs)
        return v2(PROXY, fam, body), ProxyHeader(version=2, local=True, tlvs=tuple(tlvs))
    # A family with an unspecified transport: the block is ignored.
    return v2(PROXY, fam, draw(st.binary(max_size=300))), ProxyHeader(version=2, local=True)


@st.composite
def v2_crc(draw: st.DrawFn) -> Case:
    header, expected = draw(v2_ip() | v2_unix())
    checked = with_crc(PROXY, header[13], header[16:])
    crc_tlv = (CRC32C, checked[-4:])
    return checked, ProxyHeader(
        version=expected.version,
        local=expected.local,
        family=expected.family,
        transport=expected.transport,
        source=expected.source,
        destination=expected.destination,
        tlvs=(*expected.tlvs, crc_tlv),
    )


valid_headers = st.one_of(
    v1_tcp4(), v1_tcp6(), v1_unknown(), v2_ip(), v2_unix(), v2_local(), v2_unspecified(), v2_crc()
)


@st.composite
def chunked(draw: st.DrawFn, data: bytes) -> list[bytes]:
    """*data* split at random places into non-empty chunks."""
    cuts = sorted(draw(st.sets(st.integers(1, max(1, len(data) - 1)), max_size=12)))
    bounds = [0, *(cut for cut in cuts if cut < len(data)), len(data)]
    return [data[a:b] for a, b in itertools.pairwise(bounds) if b > a]


# --- Properties ----------------------------------------------------------------------------


@bounded
@given(case=valid_headers, trailing=st.binary(max_size=64), data=st.data())
def test_valid_headers_parse_whatever_the_chunking(
    case: Case, trailing: bytes, data: st.DataObject
) -> None:
    header_bytes, expected = case
    chunks = data.draw(chunked(header_bytes + trailing))
    parser = ProxyHeaderParser()
    fed = 0
    header = None
    while header is None:
        assert fed < len(chunks), "no header after all the chunks"
        header = parser.feed(chunks[fed])
        fed += 1
    assert header == expected
    assert parser.header == expected
    # The bytes after the header: those read along with it, then those not read yet.
    assert parser.rest + b"".join(chunks[fed:]) == trailing


@bounded
@given(case=valid_headers)
def test_valid_headers_fed_byte_by_byte_need_more_until_the_last(case: Case) -> None:
    header_bytes, expected = case
    parser = ProxyHeaderParser()
    for i in range(len(header_bytes) - 1):
        assert parser.feed(header_bytes[i : i + 1]) is None
    assert parser.feed(header_bytes[-1:]) == expected
    assert parser.rest == b""


@bounded
@given(case=valid_headers, data=st.data())
def test_every_strict_prefix_needs_more(case: Case, data: st.DataObject) -> None:
    header_bytes, _ = case
    size = data.draw(st.integers(1, len(header_bytes) - 1))
    assert ProxyHeaderParser().feed(header_bytes[:size]) is None


@bounded
@given(case=valid_headers, data=st.data())
def test_truncated_header_then_end_of_stream_is_an_error(case: Case, data: st.DataObject) -> None:
    header_bytes, _ = case
    size = data.draw(st.integers(1, len(header_bytes) - 1))
    parser = ProxyHeaderParser()
    assert parser.feed(header_bytes[:size]) is None
    with pytest.raises(ProxyProtocolError, match=f"closed after {size} bytes"):
        parser.feed(b"")


def feed_all(parser: ProxyHeaderParser, chunks: list[bytes]) -> ProxyHeader | None:
    """Feed the chunks until a header; any error other than ProxyProtocolError escapes."""
    for chunk in chunks:
        header = parser.feed(chunk)
        if header is not None:
            return header
    return None


@bounded
@given(garbage=st.binary(min_size=1, max_size=300), data=st.data())
def test_random_bytes_raise_only_protocol_errors(garbage: bytes, data: st.DataObject) -> None:
    parser = ProxyHeaderParser()
    try:
        if feed_all(parser, data.draw(chunked(garbage))) is None:
            parser.feed(b"")  # end of stream: a header or an error, never "more"
            pytest.fail("end of stream without a header did not raise")
    except ProxyProtocolError:
        pass


@bounded
@given(
    start=st.sampled_from(
        [
            b"P",
            b"PROXY ",
            b"PROXY TCP4 ",
            b"PROXY TCP6 ",
            b"PROXY UNKNOWN ",
            SIGNATURE,
            SIGNATURE + bytes([PROXY, TCP4]),
            SIGNATURE + bytes([LOCAL, 0x00]),
        ]
    ),
    filler=st.binary(min_size=300, max_size=300)
    | st.sampled_from([b"1" * 300, b"1.2.3.4 " * 40, b"ff:" * 100, b"\x00" * 300]),
    data=st.data(),
)
def test_bytes_past_the_limit_always_decide(
    start: bytes, filler: bytes, data: st.DataObject
) -> None:
    """A peer cannot keep the parser waiting once the largest header would be complete."""
    parser = ProxyHeaderParser(max_v2_header_size=232)
    try:
        header = feed_all(parser, data.draw(chunked(start + filler)))
    except ProxyProtocolError:
        return
    assert header is not None


@bounded
@given(case=valid_headers, data=st.data())
def test_a_changed_byte_gives_a_header_or_a_protocol_error(
    case: Case, data: st.DataObject
) -> None:
    header_bytes, _ = case
    position = data.draw(st.integers(0, len(header_bytes) - 1))
    value = data.draw(st.integers(0, 255))
    changed = header_bytes[:position] + bytes([value]) + header_bytes[position + 1 :]
    parser = ProxyHeaderParser()
    try:
        if parser.feed(changed) is None:
            parser.feed(b"")
    except ProxyProtocolError:
        pass


# --- Early rejection -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "byte", [bytes([value]) for value in range(256) if value not in b"P\r"], ids=repr
)
def test_first_byte_that_cannot_begin_a_header_is_rejected_at_once(byte: bytes) -> None:
    rejects(byte, "not a PROXY protocol header")


@pytest.mark.parametrize(
    ("opening", "decided_at"),
    [
        (b"GET / HTTP/1.1\r\nHost: example.com\r\n\r\n", 1),
        (b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03", 1),  # TLS ClientHello
        (b"SSH-2.0-OpenSSH_9.6\r\n", 1),
        (b"EHLO client.example.com\r\n", 1),
        (b"POST /form HTTP/1.1\r\n", 2),
        (b"PUT /file HTTP/1.1\r\n", 2),
        (b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", 3),  # the HTTP/2 preface
        (b"PROXY\r\n", 6),
        (b"PROXY tcp4 1.2.3.4 1.2.3.4 1 2\r\n", 7),
        (b"\r\n\r\n\x00\r\nQUIZ\n", 11),
        (b"\r\n\r\nHello", 5),  # blank lines, not the version 2 signature
    ],
)
def test_plain_protocols_are_rejected_without_waiting(opening: bytes, decided_at: int) -> None:
    parser = ProxyHeaderParser()
    for i in range(decided_at - 1):
        assert parser.feed(opening[i : i + 1]) is None
    if decided_at <= len(opening):
        with pytest.raises(ProxyProtocolError):
            parser.feed(opening[decided_at - 1 : decided_at])
    with pytest.raises(ProxyProtocolError):
        ProxyHeaderParser().feed(opening)


def test_v2_bytes_after_the_signature_are_checked_as_they_come() -> None:
    start = SIGNATURE + bytes([PROXY])
    parser = ProxyHeaderParser()
    assert parser.feed(start) is None
    with pytest.raises(ProxyProtocolError, match="unknown family 4"):
        parser.feed(b"\x41")
    parser = ProxyHeaderParser()
    assert parser.feed(start + bytes([TCP4]) + b"\x00") is None
    with pytest.raises(ProxyProtocolError, match="too short for its addresses"):
        parser.feed(b"\x0b")  # a length of 11: the addresses of TCP over IPv4 take 12


# --- Version 1: the specification's lines --------------------------------------------------


def test_v1_example_from_the_specification() -> None:
    request = b"GET / HTTP/1.1\r\nHost: 192.168.0.11\r\n\r\n"
    header, rest = parse(b"PROXY TCP4 192.168.0.1 192.168.0.11 56324 443\r\n" + request)
    assert header == ProxyHeader(
        version=1,
        local=False,
        family=socket.AF_INET,
        transport=socket.SOCK_STREAM,
        source=("192.168.0.1", 56324),
        destination=("192.168.0.11", 443),
    )
    assert rest == request


FULL_V6 = ":".join(["ffff"] * 8)


@pytest.mark.parametrize(
    ("line", "size"),
    [
        (b"PROXY TCP4 255.255.255.255 255.255.255.255 65535 65535\r\n", 56),
        (f"PROXY TCP6 {FULL_V6} {FULL_V6} 65535 65535\r\n".encode(), 104),
        (b"PROXY UNKNOWN\r\n", 15),
        (f"PROXY UNKNOWN {FULL_V6} {FULL_V6} 65535 65535\r\n".encode(), 107),
    ],
)
def test_v1_longest_lines_of_the_specification(line: bytes, size: int) -> None:
    assert len(line) == size
    header, rest = parse(line + b"data")
    assert rest == b"data"
    assert header.version == 1


def test_v1_zero_addresses_and_ports_are_valid() -> None:
    header, _ = parse(b"PROXY TCP4 0.0.0.0 0.0.0.0 0 0\r\n")
    assert header.source == ("0.0.0.0", 0)
    header, _ = parse(b"PROXY TCP6 :: ::1 0 1\r\n")
    assert header.source == ("::", 0, 0, 0)
    assert header.destination == ("::1", 1, 0, 0)


def test_v1_ipv4_mapped_address_stays_ipv6_as_getpeername_gives_it() -> None:
    header, _ = parse(b"PROXY TCP6 ::ffff:192.0.2.1 0:0:0:0:0:ffff:c000:0202 1 2\r\n")
    assert header.source == ("::ffff:192.0.2.1", 1, 0, 0)
    assert header.destination == ("::ffff:192.0.2.2", 2, 0, 0)


def test_v1_unknown_ignores_the_rest_of_its_line() -> None:
    header, rest = parse(b"PROXY UNKNOWN whatever \xff\n here\r\nabc")
    assert header == ProxyHeader(version=1, local=True)
    assert rest == b"abc"


def test_v1_line_of_108_bytes_is_rejected_when_its_107th_byte_arrives() -> None:
    line = b"PROXY UNKNOWN " + b"x" * 92 + b"\r\n"
    assert len(line) == 108
    parser = ProxyHeaderParser()
    assert parser.feed(line[:106]) is None
    with pytest.raises(ProxyProtocolError, match=r"longer than 107|within 107"):
        parser.feed(line[106:107])
    rejects(b"PROXY UNKNOWN " + b"x" * 200, "without CRLF within 107 bytes")


@pytest.mark.parametrize(
    ("line", "match"),
    [
        (b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\n", "unexpected byte"),  # LF alone
        (b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\r\r\n", "CR not followed by LF"),
        (b"PROXY UNKNOWN\rx\r\n", "CR not followed by LF"),
        (b"PROXY  TCP4 1.2.3.4 5.6.7.8 1 2\r\n", "unknown protocol"),
        (b"PROXY TCP4  1.2.3.4 5.6.7.8 1 2\r\n", "empty field"),
        (b"PROXY TCP4 1.2.3.4  5.6.7.8 1 2\r\n", "empty field"),
        (b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2 \r\n", "too many fields|invalid port"),
        (b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2 3\r\n", "too many fields"),
        (b"PROXY TCP4 1.2.3.4 5.6.7.8 1\r\n", "needs 4 fields"),
        (b"PROXY TCP4\r\n", "unknown protocol"),
        (b"PROXY TCP4 \r\n", "needs 4 fields"),
        (b"PROXY TCP5 1.2.3.4 5.6.7.8 1 2\r\n", "unknown protocol"),
        (b"PROXY UDP4 1.2.3.4 5.6.7.8 1 2\r\n", "unknown protocol"),
        (b"PROXY UNKNOWNX\r\n", "unknown protocol"),
        (b"proxy TCP4 1.2.3.4 5.6.7.8 1 2\r\n", "not a PROXY"),
        (b"PROXY TCP4 01.2.3.4 5.6.7.8 1 2\r\n", "invalid IPv4"),  # no octal look-alikes
        (b"PROXY TCP4 1.2.3.256 5.6.7.8 1 2\r\n", "invalid IPv4"),
        (b"PROXY TCP4 1.2.3 5.6.7.8 1 2\r\n", "invalid IPv4"),
        (b"PROXY TCP4 1.2.3.4.5 5.6.7.8 1 2\r\n", "invalid IPv4"),
        (b"PROXY TCP4 ::1 5.6.7.8 1 2\r\n", "unexpected byte"),
        (b"PROXY TCP6 1.2.3.4 ::1 1 2\r\n", "invalid IPv6"),
        (b"PROXY TCP6 ::1::2 ::1 1 2\r\n", "invalid IPv6"),
        (b"PROXY TCP6 1:2:3:4:5:6:7:8:9 ::1 1 2\r\n", "invalid IPv6"),
        (b"PROXY TCP6 fe80::1%eth0 ::1 1 2\r\n", "unexpected byte"),
        (b"PROXY TCP6 ::ffff:01.2.3.4 ::1 1 2\r\n", "invalid IPv6"),
        (b"PROXY TCP4 1.2.3.4 5.6.7.8 01 2\r\n", "invalid port"),  # no leading zeros
        (b"PROXY TCP4 1.2.3.4 5.6.7.8 1 65536\r\n", "invalid port"),
        (b"PROXY TCP4 1.2.3.4 5.6.7.8 1 123456\r\n", "invalid port"),
        (b"PROXY TCP4 1.2.3.4 5.6.7.8 -1 2\r\n", "unexpected byte"),
        (b"PROXY TCP4 1.2.3.4 5.6.7.8 +1 2\r\n", "unexpected byte"),
        (b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\x00\r\n", "unexpected byte"),
    ],
)
def test_v1_invalid_lines(line: bytes, match: str) -> None:
    rejects(line, match)


# --- Version 2 ------------------------------------------------------------------------------


def test_v2_tcp4_written_out_by_hand() -> None:
    header, rest = parse(
        b"\r\n\r\n\x00\r\nQUIT\n"  # signature
        b"\x21"  # version 2, PROXY
        b"\x11"  # AF_INET, STREAM
        b"\x00\x0c"  # 12 bytes of addresses
        b"\xc0\xa8\x00\x01"  # 192.168.0.1
        b"\xc0\xa8\x00\x0b"  # 192.168.0.11
        b"\xdc\x04"  # 56324
        b"\x01\xbb"  # 443
        b"GET /"
    )
    assert header == ProxyHeader(
        version=2,
        local=False,
        family=socket.AF_INET,
        transport=socket.SOCK_STREAM,
        source=("192.168.0.1", 56324),
        destination=("192.168.0.11", 443),
    )
    assert rest == b"GET /"


def test_v2_local_health_check_without_addresses() -> None:
    header, rest = parse(SIGNATURE + b"\x20\x00\x00\x00" + b"ping")
    assert header == ProxyHeader(version=2, local=True)
    assert rest == b"ping"


def test_v2_tlvs_are_kept_in_order_and_may_be_empty() -> None:
    addresses = bytes(12)
    body = addresses + tlv(0x01, b"h2") + tlv(0x04, b"") + tlv(0x02, b"example.com")
    header, _ = parse(v2(PROXY, TCP4, body))
    assert header.tlvs == ((0x01, b"h2"), (0x04, b""), (0x02, b"example.com"))


def test_v2_unix_addresses_end_at_their_nul() -> None:
    src = b"/run/app.sock".ljust(108, b"\x00")
    dst = b"\x00" + b"\xff" * 107  # unnamed, padding after the NUL is ignored
    header, _ = parse(v2(PROXY, UNIX_STREAM, src + dst))
    assert header.source == "/run/app.sock"
    assert header.destination == ""
    assert header.family == socket.AF_UNIX


@pytest.mark.parametrize(
    ("data", "match"),
    [
        (SIGNATURE + b"\x11\x11\x00\x0c" + bytes(12), "version 1, not 2"),
        (SIGNATURE + b"\x31\x11\x00\x0c" + bytes(12), "version 3, not 2"),
        (SIGNATURE + b"\x22\x11\x00\x0c" + bytes(12), "unknown command 2"),
        (SIGNATURE + b"\x2f\x11\x00\x0c" + bytes(12), "unknown command 15"),
        (SIGNATURE + b"\x21\x41\x00\x0c" + bytes(12), "unknown family 4"),
        (SIGNATURE + b"\x21\x13\x00\x0c" + bytes(12), "unknown transport 3"),
        (SIGNATURE + b"\x20\xf0\x00\x00", "unknown family 15"),  # even for LOCAL
        (v2(PROXY, TCP6, bytes(35)), "too short for its addresses"),
        (v2(PROXY, UNIX_STREAM, bytes(215)), "too short for its addresses"),
        (v2(PROXY, TCP4, bytes(12) + b"\x01"), "ends inside a TLV"),
        (v2(PROXY, TCP4, bytes(12) + b"\x01\x00"), "ends inside a TLV"),
        (v2(PROXY, TCP4, bytes(12) + b"\x01\x00\x05abcd"), "overruns the header by 1"),
        (v2(PROXY, 0x00, b"\x01\x00\x05abcd"), "overruns"),
        (v2(PROXY, TCP4, bytes(12) + tlv(1, b"") + b"\x02\xff\xff"), "overruns"),
        (v2(PROXY, UNIX_STREAM, b"a" * 108 + bytes(108)), "Unix source address without a NUL"),
        (v2(PROXY, UNIX_STREAM, bytes(108) + b"a" * 108), "destination address without"),
        (v2(PROXY, TCP4, bytes(12) + tlv(CRC32C, bytes(4))), "wrong CRC32C"),
        (v2(PROXY, TCP4, bytes(12) + tlv(CRC32C, bytes(3))), "CRC32C TLV of 3 bytes"),
    ],
)
def test_v2_invalid_headers(data: bytes, match: str) -> None:
    rejects(data, match)


def test_v2_crc32c_is_verified() -> None:
    assert crc32c(b"123456789") == 0xE3069283  # the check value of CRC-32C
    good = with_crc(PROXY, TCP4, bytes(12) + tlv(0x05, b"id-1"))
    header, _ = parse(good)
    assert header.tlvs[0] == (0x05, b"id-1")
    assert header.tlvs[1][0] == CRC32C
    # Any other change of the header breaks it: here one address byte.
    rejects(good[:16] + b"\x01" + good[17:], "wrong CRC32C")
    twice = v2(PROXY, TCP4, bytes(12) + tlv(CRC32C, bytes(4)) + tlv(CRC32C, bytes(4)))
    rejects(twice, "two CRC32C")


def test_v2_local_block_is_not_parsed() -> None:
    # A LOCAL header must be accepted whatever its block holds: even TLVs that overrun.
    header, rest = parse(v2(LOCAL, TCP4, b"\x01\x00\xff") + b"x")
    assert header == ProxyHeader(version=2, local=True)
    assert rest == b"x"


def test_v2_size_limit_is_decided_at_the_length_field() -> None:
    fits = v2(PROXY, TCP4, bytes(12) + tlv(0xE0, bytes(MAX_V2_HEADER_SIZE - 16 - 12 - 3)))
    assert len(fits) == MAX_V2_HEADER_SIZE
    header, _ = parse(fits)
    assert header.tlvs == ((0xE0, bytes(MAX_V2_HEADER_SIZE - 31)),)
    too_big = v2(PROXY, TCP4, bytes(12) + tlv(0xE0, bytes(MAX_V2_HEADER_SIZE - 30)))
    parser = ProxyHeaderParser()
    assert parser.feed(too_big[:15]) is None
    with pytest.raises(ProxyProtocolError, match="4097 bytes, over the limit of 4096"):
        parser.feed(too_big[15:16])
    largest = v2(PROXY, TCP4, bytes(12) + tlv(0xE0, bytes(0xFFFF - 15)))
    assert ProxyHeaderParser(max_v2_header_size=0xFFFF + 16).feed(largest) is not None
    rejects(largest, "65551 bytes")


# --- The parser's contract -----------------------------------------------------------------


def test_rest_before_the_header_is_an_error() -> None:
    parser = ProxyHeaderParser()
    assert parser.header is None
    with pytest.raises(RuntimeError, match="no complete PROXY header"):
        _ = parser.rest
    assert parser.feed(b"PROXY") is None
    with pytest.raises(RuntimeError):
        _ = parser.rest


def test_feed_after_the_header_is_an_error() -> None:
    parser = ProxyHeaderParser()
    assert parser.feed(b"PROXY UNKNOWN\r\n") is not None
    with pytest.raises(RuntimeError, match=r"in \.rest"):
        parser.feed(b"more")


def test_an_error_sticks() -> None:
    parser = ProxyHeaderParser()
    with pytest.raises(ProxyProtocolError, match="starts with b'G'") as first:
        parser.feed(b"GET")
    with pytest.raises(ProxyProtocolError) as again:
        parser.feed(b"PROXY UNKNOWN\r\n")
    assert str(again.value) == str(first.value)


def test_end_of_stream_before_any_byte_is_an_error() -> None:
    with pytest.raises(ProxyProtocolError, match="closed after 0 bytes"):
        ProxyHeaderParser().feed(b"")


def test_feed_takes_any_bytes_like_object() -> None:
    parser = ProxyHeaderParser()
    assert parser.feed(bytearray(b"PROXY UNKNOWN")) is None
    assert parser.feed(memoryview(b"\r\nab")) == ProxyHeader(version=1, local=True)
    assert parser.rest == b"ab"
    assert type(parser.rest) is bytes


def test_max_v2_header_size_is_checked() -> None:
    ProxyHeaderParser(max_v2_header_size=232)
    ProxyHeaderParser(max_v2_header_size=65551)
    for bad in (231, 65552, 0, -1):
        with pytest.raises(ValueError, match="max_v2_header_size must be from 232 to 65551"):
            ProxyHeaderParser(max_v2_header_size=bad)
    with pytest.raises(TypeError, match="must be an int"):
        ProxyHeaderParser(max_v2_header_size=True)
    with pytest.raises(TypeError, match="must be an int"):
        ProxyHeaderParser(max_v2_header_size=4096.0)  # type: ignore[arg-type]


def test_proxy_header_is_frozen() -> None:
    header = ProxyHeader(version=1, local=True)
    with pytest.raises(AttributeError):
        header.version = 2  # type: ignore[misc]


# --- Encoders ------------------------------------------------------------------------------


@bounded
@given(case=st.one_of(v1_tcp4(), v1_tcp6(), v2_ip(), v2_unix()))
def test_encoders_round_trip(case: Case) -> None:
    _, expected = case
    source, destination, tlvs = expected.source, expected.destination, expected.tlvs
    assert source is not None
    assert destination is not None
    if expected.version == 1:
        assert isinstance(source, tuple)
        assert isinstance(destination, tuple)
        assert ProxyHeaderParser().feed(encode_v1(source, destination)) == expected
    encoded = encode_v2(source, destination, tlvs=tlvs)
    header, _ = parse(encoded)
    assert header.source == expected.source
    assert header.destination == expected.destination
    assert header.tlvs == tlvs
    assert header.transport == socket.SOCK_STREAM
    checked, _ = parse(encode_v2(source, destination, crc32c=True))
    assert checked.tlvs[-1][0] == CRC32C


def test_encoders_match_the_specification() -> None:
    assert (
        encode_v1(("192.168.0.1", 56324), ("192.168.0.11", 443))
        == b"PROXY TCP4 192.168.0.1 192.168.0.11 56324 443\r\n"
    )
    assert encode_v1() == b"PROXY UNKNOWN\r\n"
    assert (
        encode_v1(("fe80::1%eth0", 1, 0, 2), ("::1", 2, 0, 0)) == b"PROXY TCP6 fe80::1 ::1 1 2\r\n"
    )
    expected = v2(PROXY, TCP4, bytes([192, 168, 0, 1, 192, 168, 0, 11, 0xDC, 0x04, 0x01, 0xBB]))
    assert encode_v2(("192.168.0.1", 56324), ("192.168.0.11", 443)) == expected
    assert encode_v2() == v2(LOCAL, 0x00, b"")
    assert encode_v2(("::1", 1, 0, 0), ("::2", 2, 0, 0), tlvs=[(1, b"h2")]) == v2(
        PROXY,
        TCP6,
        ipaddress.IPv6Address("::1").packed
        + ipaddress.IPv6Address("::2").packed
        + b"\x00\x01\x00\x02"
        + tlv(1, b"h2"),
    )
    unix = encode_v2("/a", "/b", crc32c=True)
    assert unix == with_crc(
        PROXY, UNIX_STREAM, b"/a".ljust(108, b"\x00") + b"/b".ljust(108, b"\x00")
    )


@pytest.mark.parametrize(
    ("source", "destination", "match"),
    [
        (("1.2.3.4", 1), None, "both source and destination"),
        (None, ("1.2.3.4", 1), "both source and destination"),
        (("1.2.3.4", 1), ("::1", 2, 0, 0), "same IP version"),
        (("1.2.3.4", 65536), ("1.2.3.4", 1), "port from 0 to 65535"),
        (("1.2.3.4", -1), ("1.2.3.4", 1), "port from 0 to 65535"),
        (("1.2.3.4",), ("1.2.3.4", 1), "not a \\(host, port\\)"),
        (("example.com", 1), ("1.2.3.4", 1), "does not appear to be an IPv4 or IPv6"),
    ],
)
def test_encoders_refuse_bad_addresses(
    source: tuple[str, int] | None, destination: tuple[str, int] | None, match: str
) -> None:
    with pytest.raises(ValueError, match=match):
        encode_v1(source, destination)
    with pytest.raises(ValueError, match=match):
        encode_v2(source, destination)


def test_encode_v2_refuses_what_it_cannot_encode() -> None:
    with pytest.raises(ValueError, match="under 108 bytes"):
        encode_v2("/" + "a" * 107, "/b")
    with pytest.raises(ValueError, match="same kind"):
        encode_v2("/a", ("1.2.3.4", 1))
    with pytest.raises(ValueError, match="invalid TLV of type 256"):
        encode_v2(("1.2.3.4", 1), ("1.2.3.4", 1), tlvs=[(256, b"")])
    with pytest.raises(ValueError, match="at most 65535 bytes"):
        encode_v2(("1.2.3.4", 1), ("1.2.3.4", 1), tlvs=[(1, bytes(0xFFFF - 12))])


# --- Trusted peers -------------------------------------------------------------------------

LOOPBACK = parse_networks(DEFAULT_TRUSTED)


@pytest.mark.parametrize(
    ("peer", "trusted"),
    [
        (("127.0.0.1", 5000), True),
        (("127.255.0.9", 5000), True),
        (("::1", 5000, 0, 0), True),
        (("::ffff:127.0.0.1", 5000, 0, 0), True),  # a dual-stack socket's IPv4 peer
        (("10.0.0.1", 5000), False),
        (("::ffff:10.0.0.1", 5000, 0, 0), False),
        (("::2", 5000, 0, 0), False),
        (("fe80::1%lo", 5000, 0, 1), False),
        ("/run/proxy.sock", True),  # Unix socket peers: only local processes
        ("", True),
        (b"\x00abstract", True),
        (("not-an-ip", 1), False),
        ((), False),
        ((1, 2), False),
        (None, False),
    ],
)
def test_is_trusted_with_the_default_networks(peer: object, trusted: bool) -> None:
    assert is_trusted(peer, LOOPBACK) is trusted


def test_is_trusted_with_other_networks() -> None:
    networks = parse_networks(["10.0.0.0/8", "2001:db8::/32", "192.0.2.7"])
    assert is_trusted(("10.1.2.3", 1), networks)
    assert is_trusted(("::ffff:10.1.2.3", 1, 0, 0), networks)
    assert is_trusted(("2001:db8::5", 1, 0, 0), networks)
    assert is_trusted(("192.0.2.7", 1), networks)
    assert not is_trusted(("192.0.2.8", 1), networks)
    assert not is_trusted(("127.0.0.1", 1), networks)
    assert not is_trusted(("127.0.0.1", 1), ())


def test_parse_networks_normalises() -> None:
    assert parse_networks(DEFAULT_TRUSTED) == (
        ipaddress.IPv4Network("127.0.0.0/8"),
        ipaddress.IPv6Network("::1/128"),
    )
    mixed = parse_networks(
        [ipaddress.ip_network("10.0.0.0/8"), ipaddress.ip_address("::1"), "192.0.2.0/24"]
    )
    assert mixed == (
        ipaddress.IPv4Network("10.0.0.0/8"),
        ipaddress.IPv6Network("::1/128"),
        ipaddress.IPv4Network("192.0.2.0/24"),
    )
    assert parse_networks(iter(())) == ()


@pytest.mark.parametrize(
    ("networks", "error", "match"),
    [
        ("127.0.0.1", TypeError, "not a single string"),
        (b"127.0.0.1", TypeError, "not a single string"),
        (["127.0.0.0/8", 7], TypeError, "entry 7 must be a string"),
        ([b"127.0.0.1"], TypeError, "entry b'127.0.0.1' must be"),
        (["127.0.0.0/8", "localhost"], ValueError, "entry 'localhost' is not a network"),
        (["10.0.0.1/8"], ValueError, "entry '10.0.0.1/8' is not a network.*host bits"),
        (["10.0.0.0/33"], ValueError, "entry '10.0.0.0/33'"),
    ],
)
def test_parse_networks_names_the_bad_entry(
    networks: object, error: type[Exception], match: str
) -> None:
    with pytest.raises(error, match=match):
        parse_networks(networks)  # type: ignore[arg-type]
