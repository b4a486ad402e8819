from __future__ import annotations

import io

import pytest
from hypothesis import given
from hypothesis import strategies as st

from trioserve import LineTooLongError
from trioserve._buffer import ReceiveBuffer


def test_take_line_waits_for_the_line_end() -> None:
    buffer = ReceiveBuffer()
    buffer.feed(b"hel")
    assert buffer.take_line() is None
    buffer.feed(b"lo\nwor")
    assert buffer.take_line() == b"hello\n"
    assert buffer.take_line() is None
    assert buffer.take_all() == b"wor"


def test_take_line_with_limit_cuts_long_lines_into_pieces() -> None:
    buffer = ReceiveBuffer()
    buffer.feed(b"abcdefg\nxy")
    assert buffer.take_line(3) == b"abc"
    assert buffer.take_line(3) == b"def"
    assert buffer.take_line(3) == b"g\n"
    assert buffer.take_line(3) is None
    assert buffer.take_line(0) == b""
    assert len(buffer) == 2


def test_take_returns_at_most_what_is_buffered() -> None:
    buffer = ReceiveBuffer()
    buffer.feed(b"abc")
    assert buffer.take(2) == b"ab"
    assert buffer.take(5) == b"c"
    assert not buffer
    with pytest.raises(ValueError, match="count must be >= 0"):
        buffer.take(-1)


def test_line_too_long_only_without_a_line_end_in_reach() -> None:
    buffer = ReceiveBuffer()
    buffer.feed(b"x" * 9)
    assert not buffer.line_too_long(10)
    buffer.feed(b"x")
    assert buffer.line_too_long(10)
    ok = ReceiveBuffer()
    ok.feed(b"x" * 9 + b"\n" + b"y" * 20)
    assert not ok.line_too_long(10)  # a 10-byte line, terminator included, fits


def test_scan_position_survives_consumption() -> None:
    buffer = ReceiveBuffer()
    buffer.feed(b"ab")
    assert buffer.take_line() is None  # scanned up to 2
    assert buffer.take(1) == b"a"
    buffer.feed(b"\ncd\n")
    assert buffer.take_line() == b"b\n"
    assert buffer.take_line() == b"cd\n"


@given(
    data=st.binary(max_size=300).map(lambda b: b.replace(b"\r", b"\n")),
    chunks=st.lists(st.integers(min_value=1, max_value=40), max_size=30),
    limits=st.lists(st.integers(min_value=-1, max_value=12), min_size=1, max_size=40),
)
def test_lines_match_bytesio_however_fed(
    data: bytes, chunks: list[int], limits: list[int]
) -> None:
    """Fed in any chunks, take_line(limit) cuts what io.BytesIO.readline(limit) cuts."""
    reference = io.BytesIO(data)
    buffer = ReceiveBuffer()
    remaining = memoryview(data)
    sizes = iter(chunks)
    for limit in limits:
        expected = reference.readline(limit)
        while True:
            line = buffer.take_line(limit)
            if line is not None:
                break
            if not remaining:
                line = buffer.take_all()
                break
            size = next(sizes, len(remaining))
            buffer.feed(remaining[:size])
            remaining = remaining[size:]
        assert line == expected


def test_take_until_finds_a_separator_split_across_feeds() -> None:
    buffer = ReceiveBuffer()
    buffer.feed(b"GET / HTTP/1.1\r\nHost: x\r\n\r")
    assert buffer.take_until(b"\r\n\r\n") is None
    buffer.feed(b"\nGET /2")
    assert buffer.take_until(b"\r\n\r\n") == b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"
    assert buffer.take_until(b"\r\n\r\n") is None
    assert buffer.take_all() == b"GET /2"


def test_take_until_with_another_separator_searches_again() -> None:
    buffer = ReceiveBuffer()
    buffer.feed(b"a;b|c")
    assert buffer.take_until(b"!") is None
    assert buffer.take_until(b"|") == b"a;b|"
    buffer.feed(b";")
    assert buffer.take_until(b"|") is None  # the remembered position is for b"|"
    assert buffer.take_until(b";") == b"c;"


def test_take_until_limit_counts_the_separator_and_keeps_the_bytes() -> None:
    buffer = ReceiveBuffer()
    buffer.feed(b"abc")
    assert buffer.take_until(b"\r\n", 5) is None
    buffer.feed(b"\r\n")
    assert buffer.take_until(b"\r\n", 5) == b"abc\r\n"
    buffer.feed(b"abcd\r\n")
    with pytest.raises(LineTooLongError, match="5 bytes"):
        buffer.take_until(b"\r\n", 5)
    assert buffer.take_until(b"\r\n", 6) == b"abcd\r\n"
    with pytest.raises(ValueError, match="separator must not be empty"):
        buffer.take_until(b"")


@given(
    data=st.lists(st.sampled_from([b"a", b"b", b"\n", b"xyz"]), max_size=150).map(b"".join),
    separator=st.sampled_from([b"a", b"ab", b"aba", b"abab", b"bb\n"]),
    chunks=st.lists(st.integers(min_value=1, max_value=40), max_size=30),
    takes=st.lists(st.integers(min_value=0, max_value=5), max_size=10),
)
def test_take_until_matches_split_however_fed(
    data: bytes, separator: bytes, chunks: list[int], takes: list[int]
) -> None:
    """Fed in any chunks, mixed with take(n), take_until cuts where bytes.find says."""
    buffer = ReceiveBuffer()
    remaining = memoryview(data)
    sizes = iter(chunks)
    position = 0
    count = 0
    while position < len(data):
        count += 1
        assert count < 1000
        if count % 3 == 0 and takes:
            size = takes.pop()
            expected = data[position : position + size]
            got = buffer.take(size)
            while len(got) < len(expected):  # take() never waits: feed and take the rest
                step = next(sizes, len(remaining))
                buffer.feed(remaining[:step])
                remaining = remaining[step:]
                got += buffer.take(size - len(got))
            assert got == expected
            position += size
            continue
        end = data.find(separator, position)
        expected = data[position:] if end < 0 else data[position : end + len(separator)]
        at_eof = False
        while (piece := buffer.take_until(separator)) is None:
            if not remaining:
                at_eof = True
                piece = buffer.take_all()
                break
            step = next(sizes, len(remaining))
            buffer.feed(remaining[:step])
            remaining = remaining[step:]
        assert piece == expected
        assert at_eof == (end < 0)
        position += len(piece)
    assert not buffer


# -- the server's budget for unread input ----------------------------------------------------


def test_input_budget_grants_what_it_has_left_and_takes_it_back() -> None:
    from trioserve._buffer import InputBudget

    budget = InputBudget(100)
    assert budget.reserve(60) == 60
    assert budget.reserve(60) == 40  # what is left
    assert budget.reserve(1) == 0
    assert isinstance(budget.refusal(), LineTooLongError)
    assert "max_buffered_input" in str(budget.refusal())
    budget.release(50)
    assert budget.available == 50
    budget.resize(10)  # what is reserved stays reserved
    assert budget.available == -40
    assert budget.reserve(5) == 0
    budget.release(50)
    assert budget.reserve(20) == 10


def test_input_budget_is_one_per_server_and_follows_its_setting() -> None:
    from trioserve._buffer import DEFAULT_MAX_BUFFERED_INPUT, input_budget

    class Server:
        pass

    server, other = Server(), Server()
    budget = input_budget(server)
    assert budget is not None
    assert budget is input_budget(server)
    assert budget is not input_budget(other)
    assert budget.total == DEFAULT_MAX_BUFFERED_INPUT
    server.max_buffered_input = 1000  # type: ignore[attr-defined]
    assert input_budget(server) is budget
    assert budget.total == budget.available == 1000
    server.max_buffered_input = None  # type: ignore[attr-defined]
    assert input_budget(server) is None
    assert input_budget("not weakly referenceable") is None
