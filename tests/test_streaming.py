"""SSEDecoder and encode_event: the event-stream framing every upstream stream goes through."""

from __future__ import annotations

from typing import Any

import orjson

from gateway.wire import DONE, SSEDecoder, SSEEvent, encode_event

# A stream with every feature the decoder must handle: CRLF and LF line ends, a comment, a
# named event, multi-line data, a field without a space after the colon, and multi-byte UTF-8.
SAMPLE = (
    b": keep-alive comment\r\n"
    b'data: {"a": 1}\r\n'
    b"\r\n"
    b"event: error\n"
    b"data: line one\n"
    b"data: line two\n"
    b"\n"
    b"data:no-space \xc3\xa9t\xc3\xa9 \xe2\x82\xac\n"
    b"\n"
    b"data: [DONE]\n"
    b"\n"
)
EXPECTED = [
    SSEEvent(None, b'{"a": 1}'),
    SSEEvent("error", b"line one\nline two"),
    SSEEvent(None, "no-space été €".encode()),
    SSEEvent(None, b"[DONE]"),
]


def decode(*pieces: bytes) -> list[SSEEvent]:
    decoder = SSEDecoder()
    events: list[SSEEvent] = []
    for piece in pieces:
        events.extend(decoder.feed(piece))
    events.extend(decoder.close())
    return events


def test_whole_stream_decodes_to_its_events() -> None:
    assert decode(SAMPLE) == EXPECTED


def test_events_are_the_same_for_every_single_split_point() -> None:
    for i in range(len(SAMPLE) + 1):
        assert decode(SAMPLE[:i], SAMPLE[i:]) == EXPECTED, f"split at byte {i}"


def test_events_are_the_same_for_every_pair_of_split_points() -> None:
    for i in range(len(SAMPLE) + 1):
        for j in range(i, len(SAMPLE) + 1):
            assert decode(SAMPLE[:i], SAMPLE[i:j], SAMPLE[j:]) == EXPECTED, f"split at {i}, {j}"


def test_events_are_the_same_when_fed_one_byte_at_a_time() -> None:
    assert decode(*(SAMPLE[i : i + 1] for i in range(len(SAMPLE)))) == EXPECTED


def test_event_is_returned_by_the_feed_that_completes_it() -> None:
    decoder = SSEDecoder()
    assert decoder.feed(b"data: x\n") == []
    assert decoder.feed(b"\n") == [SSEEvent(None, b"x")]


def test_crlf_line_ends_are_stripped_from_data_and_event_names() -> None:
    assert decode(b"event: delta\r\ndata: x\r\n\r\n") == [SSEEvent("delta", b"x")]


def test_cr_and_lf_of_one_line_end_split_across_feeds() -> None:
    assert decode(b"data: x\r", b"\n\r", b"\n") == [SSEEvent(None, b"x")]


def test_comment_lines_are_ignored() -> None:
    assert decode(b": ping\n:\ndata: x\n: between\n\n") == [SSEEvent(None, b"x")]


def test_comment_only_block_produces_no_event() -> None:
    assert decode(b": ping\n\n: pong\n\n") == []


def test_multi_line_data_is_joined_with_newlines() -> None:
    assert decode(b"data: a\ndata: b\ndata: c\n\n") == [SSEEvent(None, b"a\nb\nc")]


def test_empty_data_line_keeps_its_place_in_multi_line_data() -> None:
    assert decode(b"data: a\ndata:\ndata: c\n\n") == [SSEEvent(None, b"a\n\nc")]


def test_only_one_space_after_the_colon_is_removed() -> None:
    assert decode(b"data:  indented\n\n") == [SSEEvent(None, b" indented")]


def test_event_name_applies_to_its_event_only() -> None:
    events = decode(b"event: error\ndata: x\n\ndata: y\n\n")
    assert events == [SSEEvent("error", b"x"), SSEEvent(None, b"y")]


def test_event_name_without_data_is_forgotten_at_the_blank_line() -> None:
    assert decode(b"event: ping\n\ndata: y\n\n") == [SSEEvent(None, b"y")]


def test_unknown_fields_are_ignored() -> None:
    assert decode(b"id: 7\nretry: 1000\nfoo: bar\ndata: x\n\n") == [SSEEvent(None, b"x")]


def test_consecutive_blank_lines_produce_no_empty_events() -> None:
    assert decode(b"\n\n\ndata: x\n\n\n\n") == [SSEEvent(None, b"x")]


def test_close_surfaces_a_final_event_without_trailing_blank_line() -> None:
    decoder = SSEDecoder()
    assert decoder.feed(b"data: first\n\ndata: last\n") == [SSEEvent(None, b"first")]
    assert decoder.close() == [SSEEvent(None, b"last")]


def test_close_surfaces_a_final_event_without_any_line_end() -> None:
    decoder = SSEDecoder()
    assert decoder.feed(b"event: done\ndata: [DONE]") == []
    assert decoder.close() == [SSEEvent("done", b"[DONE]")]


def test_close_after_a_complete_stream_returns_nothing() -> None:
    decoder = SSEDecoder()
    decoder.feed(b"data: x\n\n")
    assert decoder.close() == []


def test_encode_event_writes_one_data_line_and_a_blank_line() -> None:
    assert encode_event({"a": 1, "b": "x"}) == b'data: {"a":1,"b":"x"}\n\n'


def test_encode_event_keeps_newlines_in_values_inside_one_data_line() -> None:
    encoded = encode_event({"content": "two\nlines"})
    assert encoded.count(b"\n") == 2
    assert encoded.endswith(b"\n\n")


def test_encoded_events_decode_back_to_their_payloads() -> None:
    payloads: list[dict[str, Any]] = [
        {"content": "two\nlines\r\n"},
        {"emoji": "€ 😀"},
        {"nested": {"a": [1, None]}},
    ]
    stream = b"".join(encode_event(p) for p in payloads) + DONE
    events = decode(stream)
    assert [orjson.loads(e.data) for e in events[:-1]] == payloads
    assert events[-1] == SSEEvent(None, b"[DONE]")
