"""HPACK (RFC 7541), the header compression of HTTP/2: a complete decoder and a stateless encoder.

The HTTP/2 router terminates every connection it relays, so it must read
whatever a peer's encoder chose: indexed fields, the dynamic table (with size
updates), literals with or without indexing, never-indexed literals and
Huffman-coded strings. The decoder implements all of it and rejects
malformed blocks (``HpackError``, a ``COMPRESSION_ERROR`` for the
connection).

The encoder is deliberately simpler: it never inserts into the dynamic table
and never Huffman-codes. A static-table match is sent as one index byte,
anything else as a literal without indexing (never-indexed when the sender
marked it so, which RFC 7541 section 6.2.3 obliges an intermediary to keep).
The output is a few bytes larger than a stateful encoder's, but each header
block is independent of the peer's table, so there is no encoder state to
keep in step with ``SETTINGS_HEADER_TABLE_SIZE`` beyond announcing a table
size of 0 once.

Huffman decoding walks a 4-bit state machine built at import from the code
lengths of RFC 7541 Appendix B: the code there is canonical (codes of equal
length are consecutive, in symbol order), so the lengths alone define it.

Pure, standard library only: the in-pod router imports this module.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable
from typing import TypeAlias

Header: TypeAlias = tuple[bytes, bytes]

ENTRY_OVERHEAD = 32
"""Bytes added to ``len(name) + len(value)`` for an entry's size in the dynamic table (RFC 7541 section 4.1)."""
DEFAULT_TABLE_SIZE = 4096
"""The dynamic table size both ends start with (``SETTINGS_HEADER_TABLE_SIZE``'s default)."""
MAX_INTEGER = (1 << 32) - 1
"""Largest integer accepted in a header block: anything above is an attack, not a header."""


class HpackError(Exception):
    """A header block that cannot be decoded; the HTTP/2 connection ends with ``COMPRESSION_ERROR``."""


STATIC_TABLE: tuple[Header, ...] = (
    (b":authority", b""),
    (b":method", b"GET"),
    (b":method", b"POST"),
    (b":path", b"/"),
    (b":path", b"/index.html"),
    (b":scheme", b"http"),
    (b":scheme", b"https"),
    (b":status", b"200"),
    (b":status", b"204"),
    (b":status", b"206"),
    (b":status", b"304"),
    (b":status", b"400"),
    (b":status", b"404"),
    (b":status", b"500"),
    (b"accept-charset", b""),
    (b"accept-encoding", b"gzip, deflate"),
    (b"accept-language", b""),
    (b"accept-ranges", b""),
    (b"accept", b""),
    (b"access-control-allow-origin", b""),
    (b"age", b""),
    (b"allow", b""),
    (b"authorization", b""),
    (b"cache-control", b""),
    (b"content-disposition", b""),
    (b"content-encoding", b""),
    (b"content-language", b""),
    (b"content-length", b""),
    (b"content-location", b""),
    (b"content-range", b""),
    (b"content-type", b""),
    (b"cookie", b""),
    (b"date", b""),
    (b"etag", b""),
    (b"expect", b""),
    (b"expires", b""),
    (b"from", b""),
    (b"host", b""),
    (b"if-match", b""),
    (b"if-modified-since", b""),
    (b"if-none-match", b""),
    (b"if-range", b""),
    (b"if-unmodified-since", b""),
    (b"last-modified", b""),
    (b"link", b""),
    (b"location", b""),
    (b"max-forwards", b""),
    (b"proxy-authenticate", b""),
    (b"proxy-authorization", b""),
    (b"range", b""),
    (b"referer", b""),
    (b"refresh", b""),
    (b"retry-after", b""),
    (b"server", b""),
    (b"set-cookie", b""),
    (b"strict-transport-security", b""),
    (b"transfer-encoding", b""),
    (b"user-agent", b""),
    (b"vary", b""),
    (b"via", b""),
    (b"www-authenticate", b""),
)
"""RFC 7541 Appendix A; index ``i`` (1-based on the wire) is ``STATIC_TABLE[i - 1]``."""

_STATIC_FULL: dict[Header, int] = {}
_STATIC_NAME: dict[bytes, int] = {}
for _index, _entry in enumerate(STATIC_TABLE, start=1):
    _STATIC_FULL.setdefault(_entry, _index)
    _STATIC_NAME.setdefault(_entry[0], _index)

# -- Huffman code (RFC 7541 Appendix B) --------------------------------------------------

HUFFMAN_LENGTHS = bytes.fromhex(
    "0d171c1c1c1c1c1c1c181e1c1c1e1c1c1c1c1c1c1c1c1e1c1c1c1c1c1c1c1c1c"  # symbols 0-31
    "060a0a0c0d06080b0a0a080b080606060505050606060606060607080f060c0a"  # 32-63
    "0d06070707070707070707070707070707070707070707070807080d130d0e06"  # 64-95
    "0f05060506050606060507070606060506070605050607070707070f0b0e0d1c"  # 96-127
    "1416141416161617161717171717181718181617181717171715161716171718"  # 128-159
    "1615141616171715171616181516171715151615171617171416161617161617"  # 160-191
    "1a1a1413161716191a1a1a1b1b1a181913151a1b1b1a1b1815151a1a1c1b1b1b"  # 192-223
    "14181415161515171616191918181a171a1b1a1a1b1b1b1b1b1c1b1b1b1b1b1a"  # 224-255
    "1e"  # 256: EOS
)
"""Bit length of each symbol's code (256 is EOS)."""

EOS = 256


def huffman_codes() -> list[int]:
    """Each symbol's code, assigned canonically from ``HUFFMAN_LENGTHS`` (shortest first, then by symbol)."""
    codes = [0] * len(HUFFMAN_LENGTHS)
    code = -1
    previous = 0
    for symbol in sorted(range(len(HUFFMAN_LENGTHS)), key=lambda s: (HUFFMAN_LENGTHS[s], s)):
        length = HUFFMAN_LENGTHS[symbol]
        code = (code + 1) << (length - previous)
        previous = length
        codes[symbol] = code
    return codes


HUFFMAN_CODES = huffman_codes()

# The decoder's state machine: states are the code tree's internal nodes (0 is the root); for each state and
# input nibble, ``_NEXT`` gives the next state and ``_EMIT`` the symbol completed on the way (-1 for none,
# -2 for EOS or a path leading nowhere, both errors). A string may end only at the root or on a node reached
# by at most 7 one-bits (padding is a prefix of EOS, RFC 7541 section 5.2): ``_CAN_END``.
_FAIL = -2


def _build_decoder() -> tuple[list[int], list[int], list[bool]]:
    # node -> [child for bit 0, child for bit 1]: a node's index, -1 for none, or -2 - symbol for a leaf
    children: list[list[int]] = [[-1, -1]]
    for symbol, (code, length) in enumerate(zip(HUFFMAN_CODES, HUFFMAN_LENGTHS, strict=True)):
        node = 0
        for shift in range(length - 1, 0, -1):
            bit = (code >> shift) & 1
            if children[node][bit] < 0:
                children.append([-1, -1])
                children[node][bit] = len(children) - 1
            node = children[node][bit]
        children[node][code & 1] = -2 - symbol
    can_end = [False] * len(children)
    node, depth = 0, 0
    while node >= 0 and depth <= 7:
        can_end[node] = True
        node, depth = children[node][1], depth + 1
    next_state = [0] * (len(children) * 16)
    emit = [-1] * (len(children) * 16)
    for state in range(len(children)):
        for nibble in range(16):
            node, out = state, -1
            for shift in (3, 2, 1, 0):
                child = children[node][(nibble >> shift) & 1]
                if child >= 0:
                    node = child
                    continue
                symbol = -2 - child
                if child == -1 or symbol == EOS:
                    out = _FAIL
                    break
                out = symbol  # codes are at least 5 bits: a nibble completes one symbol at most
                node = 0
            next_state[state * 16 + nibble] = node
            emit[state * 16 + nibble] = out
    return next_state, emit, can_end


_NEXT, _EMIT, _CAN_END = _build_decoder()


def huffman_decode(data: bytes) -> bytes:
    """Decode a Huffman-coded string; ``HpackError`` on EOS, an invalid code or bad padding."""
    out = bytearray()
    state = 0
    nxt, emit = _NEXT, _EMIT
    for byte in data:
        for nibble in (byte >> 4, byte & 0xF):
            index = state * 16 + nibble
            symbol = emit[index]
            if symbol >= 0:
                out.append(symbol)
            elif symbol == _FAIL:
                raise HpackError("invalid Huffman code (EOS or an unassigned code) in a header string")
            state = nxt[index]
    if not _CAN_END[state]:
        raise HpackError("Huffman-coded string with invalid padding")
    return bytes(out)


def huffman_encode(data: bytes) -> bytes:
    """Huffman-code ``data``, padded with the EOS prefix (used by tests; the encoder below sends raw strings)."""
    acc, bits = 0, 0
    for byte in data:
        acc = (acc << HUFFMAN_LENGTHS[byte]) | HUFFMAN_CODES[byte]
        bits += HUFFMAN_LENGTHS[byte]
    pad = -bits % 8
    acc = (acc << pad) | ((1 << pad) - 1)
    return acc.to_bytes((bits + pad) // 8, "big")


# -- primitives --------------------------------------------------------------------------


def encode_integer(value: int, *, prefix_bits: int, first: int = 0) -> bytes:
    """``value`` with an N-bit prefix (RFC 7541 section 5.1); ``first`` holds the pattern bits above the prefix."""
    limit = (1 << prefix_bits) - 1
    if value < limit:
        return bytes((first | value,))
    out = bytearray((first | limit,))
    value -= limit
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def decode_integer(data: bytes, pos: int, *, prefix_bits: int) -> tuple[int, int]:
    """The integer at ``data[pos]`` with an N-bit prefix, and the position after it."""
    if pos >= len(data):
        raise HpackError("header block ends inside an integer")
    limit = (1 << prefix_bits) - 1
    value = data[pos] & limit
    pos += 1
    if value < limit:
        return value, pos
    shift = 0
    while True:
        if pos >= len(data):
            raise HpackError("header block ends inside an integer")
        byte = data[pos]
        pos += 1
        value += (byte & 0x7F) << shift
        shift += 7
        if value > MAX_INTEGER:
            raise HpackError("integer in header block too large")
        if not byte & 0x80:
            return value, pos


def encode_string(value: bytes) -> bytes:
    """A string literal without Huffman coding."""
    return encode_integer(len(value), prefix_bits=7) + value


def decode_string(data: bytes, pos: int) -> tuple[bytes, int]:
    """The string literal at ``pos`` (Huffman-decoded if flagged) and the position after it."""
    if pos >= len(data):
        raise HpackError("header block ends before a string")
    huffman = data[pos] & 0x80
    length, pos = decode_integer(data, pos, prefix_bits=7)
    end = pos + length
    if end > len(data):
        raise HpackError(f"string of {length} bytes runs past the header block")
    raw = data[pos:end]
    return (huffman_decode(raw) if huffman else raw), end


# -- decoder -----------------------------------------------------------------------------


class Decoder:
    """Decodes the header blocks of one connection direction, keeping its dynamic table.

    ``max_table_size`` is the ``SETTINGS_HEADER_TABLE_SIZE`` this side
    advertised: the peer's size updates may not exceed it.
    ``max_header_list_size`` bounds the decoded list (names, values and 32
    bytes per field), since a small block can reference large table entries
    many times.
    """

    __slots__ = ("_entries", "_size", "max_header_list_size", "max_size", "max_table_size")

    def __init__(self, *, max_table_size: int = DEFAULT_TABLE_SIZE, max_header_list_size: int = 1 << 20) -> None:
        self.max_table_size = max_table_size
        self.max_size = max_table_size
        self.max_header_list_size = max_header_list_size
        self._entries: deque[Header] = deque()
        self._size = 0

    @property
    def table(self) -> list[Header]:
        """The dynamic table, newest entry first (index 62 on the wire)."""
        return list(self._entries)

    @property
    def table_size(self) -> int:
        """The dynamic table's size as RFC 7541 counts it."""
        return self._size

    def _evict(self, limit: int) -> None:
        while self._size > limit:
            name, value = self._entries.pop()
            self._size -= len(name) + len(value) + ENTRY_OVERHEAD

    def _add(self, header: Header) -> None:
        size = len(header[0]) + len(header[1]) + ENTRY_OVERHEAD
        if size > self.max_size:
            self._entries.clear()  # an entry larger than the table empties it and is not added (section 4.4)
            self._size = 0
            return
        self._evict(self.max_size - size)
        self._entries.appendleft(header)
        self._size += size

    def _lookup(self, index: int) -> Header:
        if 0 < index <= len(STATIC_TABLE):
            return STATIC_TABLE[index - 1]
        dynamic = index - len(STATIC_TABLE) - 1
        if index == 0 or dynamic >= len(self._entries):
            raise HpackError(f"header table index {index} out of range")
        return self._entries[dynamic]

    def decode(self, data: bytes) -> list[Header]:
        """The header list of one complete header block."""
        return self.decode_block(data)[0]

    def decode_block(self, data: bytes) -> tuple[list[Header], frozenset[int]]:
        """The header list, and the positions in it of never-indexed fields (to be re-sent the same way)."""
        headers: list[Header] = []
        sensitive: set[int] = set()
        list_size = 0
        pos = 0
        end = len(data)
        while pos < end:
            byte = data[pos]
            if byte & 0x80:  # indexed field
                index, pos = decode_integer(data, pos, prefix_bits=7)
                header = self._lookup(index)
            elif byte & 0xE0 == 0x20:  # dynamic table size update
                if headers:
                    raise HpackError("dynamic table size update after a header field")
                size, pos = decode_integer(data, pos, prefix_bits=5)
                if size > self.max_table_size:
                    raise HpackError(f"dynamic table size update to {size} above the advertised {self.max_table_size}")
                self.max_size = size
                self._evict(size)
                continue
            else:
                indexing = byte & 0x40
                index, pos = decode_integer(data, pos, prefix_bits=6 if indexing else 4)
                if index:
                    name = self._lookup(index)[0]
                else:
                    name, pos = decode_string(data, pos)
                value, pos = decode_string(data, pos)
                header = (name, value)
                if indexing:
                    self._add(header)
                elif byte & 0x10:
                    sensitive.add(len(headers))
            list_size += len(header[0]) + len(header[1]) + ENTRY_OVERHEAD
            if list_size > self.max_header_list_size:
                raise HpackError(f"header list larger than {self.max_header_list_size} bytes")
            headers.append(header)
        return headers, frozenset(sensitive)


# -- encoder -----------------------------------------------------------------------------


class Encoder:
    """Encodes header blocks without the dynamic table or Huffman coding (see the module docstring).

    The first block starts with a table size update to 0, so the peer's
    decoder knows its table stays empty whatever ``SETTINGS_HEADER_TABLE_SIZE``
    it later announces; ``reset_table`` repeats it after such a change.
    """

    __slots__ = ("_announce",)

    def __init__(self) -> None:
        self._announce = True

    def reset_table(self) -> None:
        """Announce the (empty) table size again at the start of the next block."""
        self._announce = True

    def encode(self, headers: Iterable[Header], *, sensitive: Iterable[int] = ()) -> bytes:
        """A header block for ``headers``; fields at the ``sensitive`` positions are sent never-indexed."""
        out = bytearray()
        if self._announce:
            out.append(0x20)  # table size update: 0
            self._announce = False
        secret = set(sensitive)
        for position, header in enumerate(headers):
            name, value = header
            if position in secret:
                index = _STATIC_NAME.get(name, 0)
                out += encode_integer(index, prefix_bits=4, first=0x10)
            else:
                full = _STATIC_FULL.get(header)
                if full is not None:
                    out.append(0x80 | full)
                    continue
                index = _STATIC_NAME.get(name, 0)
                out += encode_integer(index, prefix_bits=4)
            if not index:
                out += encode_string(name)
            out += encode_string(value)
        return bytes(out)
