"""HPACK against RFC 7541 Appendix C, plus integer edge cases, table sizes and malformed blocks."""

from __future__ import annotations

import os

import pytest

from innerloop.router.hpack import (
    HUFFMAN_CODES,
    HUFFMAN_LENGTHS,
    STATIC_TABLE,
    Decoder,
    Encoder,
    HpackError,
    decode_integer,
    decode_string,
    encode_integer,
    huffman_decode,
    huffman_encode,
)


def h(text: str) -> bytes:
    return bytes.fromhex(text.replace(" ", "").replace("\n", ""))


# -- integers (C.1) and strings -------------------------------------------------


@pytest.mark.parametrize(
    ("value", "prefix", "wire"),
    [
        (10, 5, "0a"),  # C.1.1
        (1337, 5, "1f9a0a"),  # C.1.2
        (42, 8, "2a"),  # C.1.3
        (30, 5, "1e"),  # one below the prefix limit: fits
        (31, 5, "1f00"),  # exactly the limit: a zero continuation byte
        (127, 7, "7f00"),
        (128, 7, "7f01"),
        (255, 8, "ff00"),
        (2**32 - 1, 4, "0ff0ffffff0f"),
    ],
)
def test_integer_round_trip(value: int, prefix: int, wire: str) -> None:
    assert encode_integer(value, prefix_bits=prefix).hex() == wire
    assert decode_integer(bytes.fromhex(wire), 0, prefix_bits=prefix) == (value, len(wire) // 2)


def test_integer_keeps_the_pattern_bits_and_ignores_them_when_decoding() -> None:
    assert encode_integer(5, prefix_bits=4, first=0x10) == b"\x15"
    assert decode_integer(b"\xe5", 0, prefix_bits=5) == (5, 1)


@pytest.mark.parametrize("wire", ["1f", "1f9a", "1fff"])
def test_truncated_integer_is_an_error(wire: str) -> None:
    with pytest.raises(HpackError, match="ends inside an integer"):
        decode_integer(bytes.fromhex(wire), 0, prefix_bits=5)


def test_huge_integer_is_an_error() -> None:
    with pytest.raises(HpackError, match="too large"):
        decode_integer(b"\x1f" + b"\xff" * 6 + b"\x01", 0, prefix_bits=5)


def test_string_longer_than_block_is_an_error() -> None:
    with pytest.raises(HpackError, match="runs past"):
        decode_string(b"\x05abc", 0)


# -- Huffman ---------------------------------------------------------------------


def test_huffman_code_matches_appendix_b_samples() -> None:
    # (symbol, code, bit length) rows copied from RFC 7541 Appendix B.
    rows = [
        (0, 0x1FF8, 13),
        (ord(" "), 0x14, 6),
        (ord("0"), 0x0, 5),
        (ord("a"), 0x3, 5),
        (ord("z"), 0x7B, 7),
        (ord("~"), 0x1FFD, 13),
        (10, 0x3FFFFFFC, 30),
        (255, 0x3FFFFEE, 26),
        (256, 0x3FFFFFFF, 30),
    ]
    for symbol, code, length in rows:
        assert (HUFFMAN_CODES[symbol], HUFFMAN_LENGTHS[symbol]) == (code, length), symbol


def test_huffman_code_is_a_complete_prefix_code() -> None:
    assert sum(2.0**-length for length in HUFFMAN_LENGTHS) == 1.0
    seen = {(code, length) for code, length in zip(HUFFMAN_CODES, HUFFMAN_LENGTHS, strict=True)}
    assert len(seen) == 257


def test_huffman_matches_the_hpack_package_when_installed() -> None:
    constants = pytest.importorskip("hpack.huffman_constants")
    assert list(constants.REQUEST_CODES) == HUFFMAN_CODES
    assert list(constants.REQUEST_CODES_LENGTH) == list(HUFFMAN_LENGTHS)


def test_huffman_round_trips_every_byte() -> None:
    data = bytes(range(256)) * 3 + os.urandom(1000)
    assert huffman_decode(huffman_encode(data)) == data
    assert huffman_decode(huffman_encode(b"")) == b""


@pytest.mark.parametrize(
    ("wire", "message"),
    [
        ("ffffffff", "invalid Huffman code"),  # 30 one-bits: EOS inside the string
        ("00", "padding"),  # "0" (00000) then 000 padding: padding must be ones
        ("1fff", "padding"),  # "0" (00000) then 11 one-bits: padding longer than 7 bits
    ],
)
def test_huffman_rejects_eos_and_bad_padding(wire: str, message: str) -> None:
    with pytest.raises(HpackError, match=message):
        huffman_decode(bytes.fromhex(wire))


# -- C.2: single representations -----------------------------------------------------


def test_c2_1_literal_with_indexing() -> None:
    decoder = Decoder()
    wire = h("400a 6375 7374 6f6d 2d6b 6579 0d63 7573 746f 6d2d 6865 6164 6572")
    assert decoder.decode(wire) == [(b"custom-key", b"custom-header")]
    assert decoder.table == [(b"custom-key", b"custom-header")]
    assert decoder.table_size == 55


def test_c2_2_literal_without_indexing() -> None:
    decoder = Decoder()
    assert decoder.decode(h("040c 2f73 616d 706c 652f 7061 7468")) == [(b":path", b"/sample/path")]
    assert decoder.table == []


def test_c2_3_never_indexed_is_reported_sensitive() -> None:
    decoder = Decoder()
    headers, sensitive = decoder.decode_block(h("1008 7061 7373 776f 7264 0673 6563 7265 74"))
    assert headers == [(b"password", b"secret")]
    assert sensitive == {0}
    assert decoder.table == []


def test_c2_4_indexed() -> None:
    assert Decoder().decode(b"\x82") == [(b":method", b"GET")]


# -- C.3 / C.4: requests, one connection's blocks in order ----------------------------------

REQUESTS = [
    [(b":method", b"GET"), (b":scheme", b"http"), (b":path", b"/"), (b":authority", b"www.example.com")],
    [
        (b":method", b"GET"),
        (b":scheme", b"http"),
        (b":path", b"/"),
        (b":authority", b"www.example.com"),
        (b"cache-control", b"no-cache"),
    ],
    [
        (b":method", b"GET"),
        (b":scheme", b"https"),
        (b":path", b"/index.html"),
        (b":authority", b"www.example.com"),
        (b"custom-key", b"custom-value"),
    ],
]
REQUEST_TABLES = [
    ([(b":authority", b"www.example.com")], 57),
    ([(b"cache-control", b"no-cache"), (b":authority", b"www.example.com")], 110),
    ([(b"custom-key", b"custom-value"), (b"cache-control", b"no-cache"), (b":authority", b"www.example.com")], 164),
]
C3 = [
    "8286 8441 0f77 7777 2e65 7861 6d70 6c65 2e63 6f6d",
    "8286 84be 5808 6e6f 2d63 6163 6865",
    "8287 85bf 400a 6375 7374 6f6d 2d6b 6579 0c63 7573 746f 6d2d 7661 6c75 65",
]
C4 = [
    "8286 8441 8cf1 e3c2 e5f2 3a6b a0ab 90f4 ff",
    "8286 84be 5886 a8eb 1064 9cbf",
    "8287 85bf 4088 25a8 49e9 5ba9 7d7f 8925 a849 e95b b8e8 b4bf",
]


@pytest.mark.parametrize("blocks", [C3, C4], ids=["C.3 plain", "C.4 huffman"])
def test_request_examples(blocks: list[str]) -> None:
    decoder = Decoder()
    for wire, expected, (table, size) in zip(blocks, REQUESTS, REQUEST_TABLES, strict=True):
        assert decoder.decode(h(wire)) == expected
        assert decoder.table == table
        assert decoder.table_size == size


# -- C.5 / C.6: responses with a 256-byte table, so entries get evicted ------------------------

DATE1 = b"Mon, 21 Oct 2013 20:13:21 GMT"
DATE2 = b"Mon, 21 Oct 2013 20:13:22 GMT"
LOCATION = b"https://www.example.com"
COOKIE = b"foo=ASDJKHQKBZXOQWEOPIUAXQWEOIU; max-age=3600; version=1"
RESPONSES = [
    [(b":status", b"302"), (b"cache-control", b"private"), (b"date", DATE1), (b"location", LOCATION)],
    [(b":status", b"307"), (b"cache-control", b"private"), (b"date", DATE1), (b"location", LOCATION)],
    [
        (b":status", b"200"),
        (b"cache-control", b"private"),
        (b"date", DATE2),
        (b"location", LOCATION),
        (b"content-encoding", b"gzip"),
        (b"set-cookie", COOKIE),
    ],
]
RESPONSE_TABLES = [
    ([(b"location", LOCATION), (b"date", DATE1), (b"cache-control", b"private"), (b":status", b"302")], 222),
    ([(b":status", b"307"), (b"location", LOCATION), (b"date", DATE1), (b"cache-control", b"private")], 222),
    ([(b"set-cookie", COOKIE), (b"content-encoding", b"gzip"), (b"date", DATE2)], 215),
]
C5 = [
    """4803 3330 3258 0770 7269 7661 7465 611d 4d6f 6e2c 2032 3120 4f63 7420 3230 3133
    2032 303a 3133 3a32 3120 474d 546e 1768 7474 7073 3a2f 2f77 7777 2e65 7861 6d70
    6c65 2e63 6f6d""",
    "4803 3330 37c1 c0bf",
    """88c1 611d 4d6f 6e2c 2032 3120 4f63 7420 3230 3133 2032 303a 3133 3a32 3220 474d
    54c0 5a04 677a 6970 7738 666f 6f3d 4153 444a 4b48 514b 425a 584f 5157 454f 5049
    5541 5851 5745 4f49 553b 206d 6178 2d61 6765 3d33 3630 303b 2076 6572 7369 6f6e
    3d31""",
]
C6 = [
    """4882 6402 5885 aec3 771a 4b61 96d0 7abe 9410 54d4 44a8 2005 9504 0b81 66e0 82a6
    2d1b ff6e 919d 29ad 1718 63c7 8f0b 97c8 e9ae 82ae 43d3""",
    "4883 640e ffc1 c0bf",
    """88c1 6196 d07a be94 1054 d444 a820 0595 040b 8166 e084 a62d 1bff c05a 839b d9ab
    77ad 94e7 821d d7f2 e6c7 b335 dfdf cd5b 3960 d5af 2708 7f36 72c1 ab27 0fb5 291f
    9587 3160 65c0 03ed 4ee5 b106 3d50 07""",
]


@pytest.mark.parametrize("blocks", [C5, C6], ids=["C.5 plain", "C.6 huffman"])
def test_response_examples_with_eviction(blocks: list[str]) -> None:
    decoder = Decoder(max_table_size=256)
    for wire, expected, (table, size) in zip(blocks, RESPONSES, RESPONSE_TABLES, strict=True):
        assert decoder.decode(h(wire)) == expected
        assert decoder.table == table
        assert decoder.table_size == size


# -- dynamic table size updates -----------------------------------------------------------------


def test_size_update_evicts_and_limits_later_entries() -> None:
    decoder = Decoder()
    decoder.decode(h(C3[0]))
    decoder.decode(h(C3[1]))
    assert decoder.table_size == 110
    # Size update to 60 (5-bit prefix: 0x3f 0x1d), then an indexed field.
    assert decoder.decode(b"\x3f\x1d\x82") == [(b":method", b"GET")]
    assert decoder.table == [(b"cache-control", b"no-cache")]
    assert decoder.table_size == 53
    # An entry bigger than the whole table (10 + 40 + 32 > 60) empties it and is not added.
    assert decoder.decode(b"\x40\x0acustom-key\x28" + b"v" * 40) == [(b"custom-key", b"v" * 40)]
    assert decoder.table == []
    # Back up to the advertised maximum: entries fit again.
    decoder.decode(b"\x3f\xe1\x1f" + h("400a 6375 7374 6f6d 2d6b 6579 0d63 7573 746f 6d2d 6865 6164 6572"))
    assert decoder.table_size == 55


def test_size_update_to_zero_then_back() -> None:
    decoder = Decoder()
    decoder.decode(h(C3[0]))
    decoder.decode(b"\x20\x3f\xe1\x1f")  # two updates at the block start are allowed
    assert decoder.table == []
    assert decoder.max_size == 4096


@pytest.mark.parametrize(
    ("wire", "message"),
    [
        (b"\x3f\xe2\x1f", "above the advertised"),  # 4097
        (b"\x82\x20", "after a header field"),
        (b"\x80", "index 0 out of range"),
        (b"\xbe", "index 62 out of range"),  # the dynamic table is empty
        (b"\x41\x03ab", "runs past"),
        (b"\x40\x01a", "ends before a string"),
        (b"\x00\x81\xff", "Huffman-coded string with invalid padding"),
        (b"\x00\x84\xff\xff\xff\xff", "invalid Huffman code"),
    ],
)
def test_malformed_blocks(wire: bytes, message: str) -> None:
    with pytest.raises(HpackError, match=message):
        Decoder().decode(wire)


def test_header_list_limit_stops_amplification() -> None:
    decoder = Decoder(max_header_list_size=10_000)
    decoder.decode(b"\x40\x01x" + encode_integer(3000, prefix_bits=7) + b"v" * 3000)
    with pytest.raises(HpackError, match="header list larger"):
        decoder.decode(b"\xbe" * 4)  # four references to the 3 KB entry


# -- encoder ------------------------------------------------------------------------------------


def test_encoder_output_decodes_to_the_same_list_and_keeps_never_indexed() -> None:
    encoder = Encoder()
    decoder = Decoder()
    headers = [
        (b":method", b"POST"),
        (b":path", b"/helloworld.Greeter/SayHello"),
        (b":status", b"200"),
        (b"content-type", b"application/grpc"),
        (b"authorization", b"Bearer secret"),
        (b"x-dev", b"alice"),
        (b"x-empty", b""),
        (b"x-long", b"v" * 5000),
    ]
    for _ in range(3):
        block = encoder.encode(headers, sensitive=[4, 5])
        assert decoder.decode_block(block) == (headers, frozenset({4, 5}))
    assert decoder.table == []  # nothing is ever indexed


def test_encoder_announces_an_empty_table_first_and_after_reset() -> None:
    encoder = Encoder()
    assert encoder.encode([(b":method", b"GET")]) == b"\x20\x82"
    assert encoder.encode([(b":method", b"GET")]) == b"\x82"
    encoder.reset_table()
    assert encoder.encode([(b":status", b"200")]) == b"\x20\x88"


def test_encoder_uses_static_names() -> None:
    block = Encoder().encode([(b"content-type", b"text/plain")])
    assert block == b"\x20\x0f\x10\x0atext/plain"  # literal, name index 31 (4-bit prefix: 0x0f 0x10)
    assert len(STATIC_TABLE) == 61


def test_decoder_reads_the_hpack_package_encoder_when_installed() -> None:
    hpack = pytest.importorskip("hpack")
    theirs = hpack.Encoder()
    decoder = Decoder()
    for i in range(50):
        headers = [(b":method", b"GET"), (b":path", f"/item/{i % 7}".encode()), (b"x-n", str(i).encode())]
        assert decoder.decode(theirs.encode(headers, huffman=bool(i % 2))) == headers
