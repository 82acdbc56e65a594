"""Lossless prefix codes for the wire: Huffman codes for quantized symbols, Golomb-Rice codes for gaps.

Compressors count their bits from symbol counts and code lengths (fast, exact); these codes also really
write and read bitstreams, so tests can check that a decoded message equals the sent one and that the
counted bits equal the bitstream's length. A bitstream is a NumPy array of 0/1 values (uint8), most
significant bit first.

Huffman: D. A. Huffman, "A Method for the Construction of Minimum-Redundancy Codes", Proc. IRE 1952;
codes are canonical (Schwartz and Kallick 1964), so the code lengths alone let the decoder rebuild them.
Golomb-Rice: S. W. Golomb, "Run-length encodings", IEEE Trans. IT 1966, with a power-of-two divisor 2^b
(R. F. Rice, 1979): the code for geometric gaps, such as those between the survivors of a top-k.
"""
from __future__ import annotations

import heapq
from typing import Sequence

import numpy as np

LENGTH_BITS = 6  # each symbol's code length in a Huffman header (0 = unused symbol), so lengths <= 63
RICE_BITS = 5  # the Rice parameter b in a header, so b <= 31


def code_lengths(counts: Sequence[int] | np.ndarray) -> np.ndarray:
    """Huffman code length of each symbol from its count (0 for symbols that never occur, 1 for a lone symbol)."""
    counts = np.asarray(counts, dtype=np.int64)
    if counts.ndim != 1 or (counts < 0).any():
        raise ValueError(f"counts must be a 1-D array of non-negative integers, got {counts!r}")
    lengths = np.zeros(len(counts), dtype=np.int64)
    used = np.flatnonzero(counts)
    if len(used) == 1:
        lengths[used] = 1  # a lone symbol still takes one bit per occurrence, as in DEFLATE
        return lengths
    heap = [(int(counts[s]), i, [int(s)]) for i, s in enumerate(used)]  # (weight, tie-break, symbols below)
    heapq.heapify(heap)
    tick = len(heap)
    while len(heap) > 1:  # merge the two lightest subtrees: every symbol below them goes one level deeper
        w1, _, s1 = heapq.heappop(heap)
        w2, _, s2 = heapq.heappop(heap)
        lengths[s1 + s2] += 1
        heapq.heappush(heap, (w1 + w2, tick, s1 + s2))
        tick += 1
    if lengths.max(initial=0) >= 2**LENGTH_BITS:
        raise ValueError(f"a Huffman code length exceeds {2**LENGTH_BITS - 1} bits; counts are too skewed")
    return lengths


def canonical_codes(lengths: Sequence[int] | np.ndarray) -> np.ndarray:
    """The canonical Huffman codeword of each symbol (as an integer of `lengths[s]` bits; 0 where unused)."""
    lengths = np.asarray(lengths, dtype=np.int64)
    codes = np.zeros(len(lengths), dtype=np.int64)
    code, previous = 0, 0
    for s in sorted(np.flatnonzero(lengths), key=lambda s: (lengths[s], s)):  # shorter codes first, then by symbol
        code <<= int(lengths[s]) - previous
        codes[s], previous = code, int(lengths[s])
        code += 1
    return codes


def _bit_matrix(values: np.ndarray, widths: np.ndarray) -> np.ndarray:
    """Bits of each value in its own width, MSB first, concatenated."""
    values, widths = np.asarray(values, dtype=np.uint64), np.asarray(widths, dtype=np.int64)
    if len(values) == 0:
        return np.zeros(0, dtype=np.uint8)
    top = int(widths.max(initial=0))
    shift = widths[:, None] - 1 - np.arange(top)  # (n, top): bit j of a value is at shift width-1-j
    bits = (values[:, None] >> np.maximum(shift, 0).astype(np.uint64)) & np.uint64(1)
    return bits[shift >= 0].astype(np.uint8)


class BitWriter:
    """Appends fields to a bitstream."""

    def __init__(self) -> None:
        self._chunks: list[np.ndarray] = []

    def uint(self, values: Sequence[int] | np.ndarray, width: int) -> None:
        """Unsigned integers in `width` bits each (width 0 writes nothing)."""
        values = np.atleast_1d(np.asarray(values, dtype=np.int64))
        if width and (values.min(initial=0) < 0 or values.max(initial=0) >= 2**width):
            raise ValueError(f"values must lie in [0, 2**{width}) to fit in width={width} bits")
        self._chunks.append(_bit_matrix(values, np.full(len(values), width)))

    def float32(self, values: np.ndarray) -> None:
        """IEEE-754 single-precision numbers, 32 bits each."""
        self.uint(np.asarray(values, dtype=np.float32).reshape(-1).view(np.uint32), 32)

    def rice(self, values: Sequence[int] | np.ndarray, b: int) -> None:
        """Integers >= 1 in Rice code: q = (g - 1) >> b in unary (q ones, a zero), then the low b bits of g - 1."""
        values = np.atleast_1d(np.asarray(values, dtype=np.int64))
        if (values < 1).any():
            raise ValueError("the Rice code here takes integers >= 1")
        if not 0 <= b < 2**RICE_BITS:
            raise ValueError(f"b must be in [0, {2**RICE_BITS - 1}], got {b}")
        quotient = (values - 1) >> b
        lengths = rice_lengths(values, b)
        starts = np.cumsum(lengths) - lengths  # where each codeword begins
        bits = np.zeros(int(lengths.sum()), dtype=np.uint8)
        within = np.arange(quotient.sum()) - np.repeat(np.cumsum(quotient) - quotient, quotient)
        bits[np.repeat(starts, quotient) + within] = 1  # the unary quotient; its closing zero is already there
        low = np.repeat(starts + quotient + 1, b) + np.tile(np.arange(b), len(values))
        bits[low] = _bit_matrix((values - 1) & ((1 << b) - 1), np.full(len(values), b))
        self._chunks.append(bits)

    def huffman(self, symbols: np.ndarray, lengths: np.ndarray) -> None:
        """Symbols in the canonical Huffman code of `lengths`."""
        symbols = np.asarray(symbols, dtype=np.int64)
        if len(symbols) and (lengths[symbols] == 0).any():
            raise ValueError("every symbol to encode needs a code length > 0")
        self._chunks.append(_bit_matrix(canonical_codes(lengths)[symbols], lengths[symbols]))

    def bits(self) -> np.ndarray:
        """The bitstream written so far."""
        return np.concatenate(self._chunks) if self._chunks else np.zeros(0, dtype=np.uint8)


class BitReader:
    """Reads back, in order, the fields a `BitWriter` wrote."""

    def __init__(self, bits: np.ndarray):
        self.bits = np.asarray(bits, dtype=np.uint8)
        self.position = 0

    def _take(self, count: int) -> np.ndarray:
        if self.position + count > len(self.bits):
            raise ValueError(f"bitstream ended: needed {count} more bits at position {self.position}")
        chunk = self.bits[self.position:self.position + count]
        self.position += count
        return chunk

    def uint(self, count: int, width: int) -> np.ndarray:
        """`count` unsigned integers of `width` bits each."""
        chunk = self._take(count * width).reshape(count, width).astype(np.int64)
        return chunk @ (1 << np.arange(width - 1, -1, -1, dtype=np.int64)) if width else np.zeros(count, np.int64)

    def float32(self, count: int) -> np.ndarray:
        """`count` single-precision numbers."""
        return self.uint(count, 32).astype(np.uint32).view(np.float32)

    def rice(self, count: int, b: int) -> np.ndarray:
        """`count` Rice-coded integers with parameter b."""
        if count == 0:
            return np.zeros(0, dtype=np.int64)
        bits = self.bits[self.position:].astype(np.int64)
        zeros = np.flatnonzero(bits == 0)
        if len(zeros) == 0:
            raise ValueError(f"bitstream ended inside a Rice codeword at position {self.position}")
        # at each start p: q = ones before the next zero, then b low bits after that zero
        ends = zeros[np.minimum(np.searchsorted(zeros, np.arange(len(bits))), len(zeros) - 1)]  # next zero >= p
        quotient = ends - np.arange(len(bits))
        low = _windows(bits, b)  # (len,) value of the b bits starting at each position
        starts = self._walk(quotient + 1 + b, count)
        return (quotient[starts] << b) + low[np.minimum(ends[starts] + 1, len(bits) - 1)] * (b > 0) + 1

    def huffman(self, count: int, lengths: np.ndarray) -> np.ndarray:
        """`count` symbols of the canonical Huffman code of `lengths`."""
        lengths = np.asarray(lengths, dtype=np.int64)
        if count == 0:
            return np.zeros(0, dtype=np.int64)
        longest = int(lengths.max(initial=0))
        if longest == 0:
            raise ValueError("a Huffman code with no codewords cannot decode symbols")
        codes = canonical_codes(lengths)
        bits = self.bits[self.position:self.position + count * longest].astype(np.int64)
        value = np.zeros(len(bits), dtype=np.int64)  # the first l bits at each position, as an integer
        symbol = np.full(len(bits), -1, dtype=np.int64)
        size = np.zeros(len(bits), dtype=np.int64)
        padded = np.concatenate([bits, np.zeros(longest, dtype=np.int64)])
        for length in range(1, longest + 1):  # the codeword at p is the shortest prefix that is one
            value = 2 * value + padded[length - 1:length - 1 + len(bits)]
            for s in np.flatnonzero(lengths == length):
                hit = (size == 0) & (value == codes[s])
                symbol[hit], size[hit] = s, length
        starts = self._walk(np.where(size > 0, size, len(bits) + 1), count)
        if (size[starts] == 0).any():
            raise ValueError(f"no Huffman codeword matches the bits at position {self.position}")
        return symbol[starts]

    def _walk(self, step: np.ndarray, count: int) -> np.ndarray:
        """Offsets of `count` consecutive codewords from here (`step`: the codeword length at each offset); skip them."""
        step_list, starts, p = step.tolist(), [], 0
        for _ in range(count):
            if p >= len(step_list) or p + step_list[p] > len(self.bits) - self.position:
                raise ValueError(f"bitstream ended: codeword {len(starts)} of {count} at position {self.position + p}")
            starts.append(p)
            p += step_list[p]
        self.position += p
        return np.asarray(starts, dtype=np.int64)

    def exhausted(self) -> bool:
        """Whether every bit has been read."""
        return self.position == len(self.bits)


def _windows(bits: np.ndarray, width: int) -> np.ndarray:
    """The integer value of the `width` bits starting at each position (zeros past the end)."""
    padded = np.concatenate([bits, np.zeros(width, dtype=np.int64)])
    value = np.zeros(len(bits), dtype=np.int64)
    for j in range(width):
        value = 2 * value + padded[j:j + len(bits)]
    return value


def rice_lengths(values: np.ndarray, b: int) -> np.ndarray:
    """Length of each integer's Rice codeword with parameter b: ((g - 1) >> b) + 1 + b."""
    return ((np.asarray(values, dtype=np.int64) - 1) >> b) + 1 + b


def rice_parameter(values: np.ndarray, largest: int) -> int:
    """The b in [0, largest] that codes these integers in the fewest bits (the smallest such b on ties)."""
    return int(np.argmin([rice_lengths(values, b).sum() for b in range(largest + 1)]))


def huffman_bits(counts: Sequence[int] | np.ndarray) -> int:
    """Bits of the Huffman-coded payload of symbols with these counts (no header): sum_s count_s * length_s."""
    counts = np.asarray(counts, dtype=np.int64)
    return int(counts @ code_lengths(counts))
