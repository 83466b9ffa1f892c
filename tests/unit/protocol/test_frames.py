"""The frame codec: exact bytes, round trips, chunking and garbage (property tests)."""

from __future__ import annotations

import itertools
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from innerloop.protocol.frames import (
    HEADER_SIZE,
    MAX_PAYLOAD,
    Frame,
    FrameDecoder,
    Kind,
    ProtocolError,
    encode,
)


def valid_frames() -> st.SearchStrategy[Frame]:
    stream_ids = st.integers(min_value=1, max_value=2**32 - 1)
    payloads = st.binary(max_size=2048)
    return st.one_of(
        st.builds(Frame, st.sampled_from([Kind.OPEN, Kind.RESET]), stream_ids, payloads),
        st.builds(Frame, st.just(Kind.DATA), st.integers(min_value=0, max_value=2**32 - 1), payloads),
        st.builds(Frame, st.just(Kind.CLOSE), stream_ids),
        st.builds(
            Frame.window,
            st.integers(min_value=0, max_value=2**32 - 1),
            st.integers(min_value=1, max_value=2**31 - 1),
        ),
        st.builds(Frame, st.sampled_from([Kind.PING, Kind.PONG]), st.just(0), st.binary(min_size=8, max_size=8)),
        st.builds(Frame, st.just(Kind.GOAWAY), st.just(0), payloads),
    )


def split(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({cut % (len(data) + 1) for cut in cuts})
    bounds = [0, *points, len(data)]
    return [data[a:b] for a, b in itertools.pairwise(bounds)]


class TestEncoding:
    def test_header_layout_is_big_endian_kind_stream_length(self) -> None:
        assert encode(Frame(Kind.DATA, 0x01020304, b"hi")) == b"\x01\x01\x02\x03\x04\x00\x00\x00\x02hi"
        assert HEADER_SIZE == 9

    def test_window_carries_a_u32_increment(self) -> None:
        frame = Frame.window(3, 65536)
        assert encode(frame) == b"\x04\x00\x00\x00\x03\x00\x00\x00\x04\x00\x01\x00\x00"
        assert frame.increment == 65536

    @pytest.mark.parametrize(
        ("frame", "message"),
        [
            (Frame(Kind.DATA, 1, b"x" * (MAX_PAYLOAD + 1)), "exceeds"),
            (Frame(Kind.OPEN, 0), "cannot name stream 0"),
            (Frame(Kind.RESET, 0), "cannot name stream 0"),
            (Frame(Kind.CLOSE, 5, b"x"), "must be empty"),
            (Frame(Kind.PING, 1, b"12345678"), "must be on stream 0"),
            (Frame(Kind.PING, 0, b"short"), "must be 8 bytes"),
            (Frame(Kind.WINDOW, 1, b"\x00\x00\x00\x00"), "increment 0"),
            (Frame(Kind.WINDOW, 1, b"\x00\x00"), "must be 4 bytes"),
            (Frame(Kind.DATA, 2**32, b""), "out of range"),
        ],
    )
    def test_invalid_frames_are_refused(self, frame: Frame, message: str) -> None:
        with pytest.raises(ProtocolError, match=message):
            encode(frame)

    def test_maximum_payload_is_allowed(self) -> None:
        data = encode(Frame(Kind.DATA, 7, b"z" * MAX_PAYLOAD))
        assert FrameDecoder().feed(data) == [Frame(Kind.DATA, 7, b"z" * MAX_PAYLOAD)]


class TestDecoder:
    def test_partial_frames_wait_for_more_bytes(self) -> None:
        decoder = FrameDecoder()
        data = encode(Frame(Kind.DATA, 1, b"hello"))
        assert decoder.feed(data[:4]) == []
        assert decoder.feed(data[4:10]) == []
        assert decoder.buffered == 10
        assert decoder.feed(data[10:]) == [Frame(Kind.DATA, 1, b"hello")]
        assert decoder.buffered == 0

    def test_unknown_kind_is_a_protocol_error_naming_the_offset(self) -> None:
        decoder = FrameDecoder()
        good = encode(Frame(Kind.DATA, 1, b"ok"))
        with pytest.raises(ProtocolError, match=r"unknown frame kind 0x63 at byte 11"):
            decoder.feed(good + b"\x63" + bytes(8))

    def test_oversize_length_is_rejected_from_the_header_alone(self) -> None:
        # Without waiting for 4 GiB of payload: the header is enough.
        header = struct.pack(">BII", Kind.DATA, 1, 0xFFFFFFFF)
        with pytest.raises(ProtocolError, match="announces 4294967295 bytes"):
            FrameDecoder().feed(header)

    def test_a_broken_decoder_stays_broken(self) -> None:
        decoder = FrameDecoder()
        with pytest.raises(ProtocolError):
            decoder.feed(b"\xff" + bytes(8))
        with pytest.raises(ProtocolError):
            decoder.feed(encode(Frame(Kind.DATA, 1, b"fine")))

    def test_rules_apply_to_decoded_frames_too(self) -> None:
        with pytest.raises(ProtocolError, match="PING frame must be on stream 0"):
            FrameDecoder().feed(struct.pack(">BII", Kind.PING, 3, 8) + bytes(8))


class TestProperties:
    @given(st.lists(valid_frames(), max_size=20))
    def test_round_trip(self, frames: list[Frame]) -> None:
        data = b"".join(encode(frame) for frame in frames)
        assert FrameDecoder().feed(data) == frames

    @given(st.lists(valid_frames(), max_size=20), st.lists(st.integers(min_value=0), max_size=40))
    def test_any_chunking_decodes_identically(self, frames: list[Frame], cuts: list[int]) -> None:
        data = b"".join(encode(frame) for frame in frames)
        decoder = FrameDecoder()
        decoded: list[Frame] = []
        for chunk in split(data, cuts):
            decoded.extend(decoder.feed(chunk))
        assert decoded == frames
        assert decoder.buffered == 0

    @settings(max_examples=300)
    @given(st.binary(max_size=4096), st.lists(st.integers(min_value=0), max_size=10))
    def test_garbage_raises_only_protocol_error(self, garbage: bytes, cuts: list[int]) -> None:
        decoder = FrameDecoder()
        try:
            for chunk in split(garbage, cuts):
                for frame in decoder.feed(chunk):
                    # whatever decodes is a valid frame that encodes back to its own bytes
                    assert FrameDecoder().feed(encode(frame)) == [frame]
        except ProtocolError:
            pass

    @given(valid_frames(), st.binary(min_size=1, max_size=64))
    def test_a_valid_prefix_decodes_before_garbage_fails(self, frame: Frame, garbage: bytes) -> None:
        decoder = FrameDecoder()
        decoded = decoder.feed(encode(frame))
        assert decoded == [frame]
        try:
            decoder.feed(garbage)
        except ProtocolError as exc:
            assert "byte" in str(exc)
