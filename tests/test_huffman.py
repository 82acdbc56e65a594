import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from flbook.channel.huffman import (LENGTH_BITS, BitReader, BitWriter, canonical_codes, code_lengths, huffman_bits,
                                    rice_lengths, rice_parameter)

counts_lists = st.lists(st.integers(0, 10_000), min_size=1, max_size=40)
few = settings(max_examples=30, deadline=None)


def test_code_lengths_of_a_textbook_example():
    # counts 45, 13, 12, 16, 9, 5 (CLRS 16.3): optimal lengths 1, 3, 3, 3, 4, 4
    assert code_lengths([45, 13, 12, 16, 9, 5]).tolist() == [1, 3, 3, 3, 4, 4]


def test_unused_symbols_get_no_code_and_a_lone_symbol_gets_one_bit():
    assert code_lengths([0, 7, 0]).tolist() == [0, 1, 0]
    assert code_lengths([0, 0]).tolist() == [0, 0]
    assert huffman_bits([0, 7, 0]) == 7


@few
@given(counts_lists)
def test_lengths_satisfy_kraft_and_bound_the_entropy(counts):
    counts = np.array(counts)
    lengths = code_lengths(counts)
    assert ((lengths > 0) == (counts > 0)).all()
    used = counts > 0
    if used.sum() >= 2:
        assert np.isclose(np.sum(2.0 ** -lengths[used]), 1.0)  # a full binary tree: Kraft with equality
        p = counts[used] / counts.sum()
        entropy = -(p * np.log2(p)).sum()
        mean_length = (p * lengths[used]).sum()
        assert entropy - 1e-9 <= mean_length < entropy + 1  # Shannon's bounds for an optimal prefix code


@few
@given(counts_lists)
def test_canonical_codes_are_prefix_free(counts):
    lengths = code_lengths(counts)
    codes = canonical_codes(lengths)
    words = [format(int(codes[s]), f"0{int(lengths[s])}b") for s in np.flatnonzero(lengths)]
    assert len(set(words)) == len(words)
    assert not any(a != b and b.startswith(a) for a in words for b in words)


@few
@given(st.lists(st.integers(0, 6), min_size=0, max_size=300))
def test_huffman_round_trip_and_exact_length(symbols):
    symbols = np.array(symbols, dtype=np.int64)
    counts = np.bincount(symbols, minlength=7)
    lengths = code_lengths(counts)
    writer = BitWriter()
    writer.huffman(symbols, lengths)
    bits = writer.bits()
    assert len(bits) == huffman_bits(counts)
    reader = BitReader(bits)
    assert reader.huffman(len(symbols), lengths).tolist() == symbols.tolist()
    assert reader.exhausted()


def test_single_symbol_alphabet_round_trips():
    symbols = np.zeros(9, dtype=np.int64)
    lengths = code_lengths([9])
    writer = BitWriter()
    writer.huffman(symbols, lengths)
    assert len(writer.bits()) == 9
    assert BitReader(writer.bits()).huffman(9, lengths).tolist() == [0] * 9


@few
@given(st.lists(st.integers(1, 5000), min_size=0, max_size=50), st.integers(0, 12))
def test_rice_round_trip_and_length(values, b):
    writer = BitWriter()
    writer.rice(values, b)
    bits = writer.bits()
    assert len(bits) == int(rice_lengths(np.array(values, dtype=np.int64), b).sum())
    reader = BitReader(bits)
    assert reader.rice(len(values), b).tolist() == values
    assert reader.exhausted()


def test_rice_codewords_and_parameter():
    writer = BitWriter()
    writer.rice([1, 6, 9], 2)  # g - 1 = 0, 5, 8: quotients 0, 1, 2 and remainders 0, 1, 0
    assert "".join(map(str, writer.bits())) == "0" "00" + "10" "01" + "110" "00"
    gaps = np.random.default_rng(0).geometric(1 / 64, size=2000)
    best = rice_parameter(gaps, 20)
    assert best in (5, 6)  # about log2(mean gap * ln 2)
    assert all(rice_lengths(gaps, best).sum() <= rice_lengths(gaps, b).sum() for b in range(21))


def test_mixed_fields_round_trip():
    floats = np.array([0.0, -1.5, 3.25e-8, np.inf], dtype=np.float32)
    writer = BitWriter()
    writer.uint([3, 0, 7], 3)
    writer.float32(floats)
    writer.uint([5], 0 + 4)
    reader = BitReader(writer.bits())
    assert reader.uint(3, 3).tolist() == [3, 0, 7]
    assert reader.float32(4).tobytes() == floats.tobytes()
    assert reader.uint(1, 4).tolist() == [5]
    assert reader.exhausted()


def test_bad_input_is_rejected():
    with pytest.raises(ValueError, match="counts must be"):
        code_lengths([3, -1])
    with pytest.raises(ValueError, match="width=3"):
        BitWriter().uint([8], 3)
    with pytest.raises(ValueError, match=">= 1"):
        BitWriter().rice([0], 2)
    with pytest.raises(ValueError, match="b must be in"):
        BitWriter().rice([3], 32)
    with pytest.raises(ValueError, match="bitstream ended"):
        BitReader(np.array([1, 0], dtype=np.uint8)).uint(1, 3)
    with pytest.raises(ValueError, match="code length > 0"):
        BitWriter().huffman(np.array([1]), code_lengths([4, 0]))


def test_very_skewed_counts_stay_within_the_header_width():
    fibonacci = [1, 1]
    while len(fibonacci) < 2**LENGTH_BITS + 2:
        fibonacci.append(fibonacci[-1] + fibonacci[-2])
    with pytest.raises(ValueError, match="code length exceeds"):
        code_lengths(fibonacci)
    assert code_lengths(fibonacci[:40]).max() < 2**LENGTH_BITS
