"""Compressors for what clients (and optionally the server) send: sparsify, quantize, encode, count every bit.

A `Compressor` is a pipeline applied to each layer of a message: an optional sparsifier (`TopK`), an optional
quantizer (`UniformQuantizer`, `QSGD`, `KMeans`), and a wire format. It returns what the receiver decodes and the exact
number of bits the layer took; `encode`/`decode` really write and read that bitstream. One layer's wire format:

    count      number of non-zero entries, 32 bits                        (sparse position codes only)
    positions  dense: none (zeros are sent as values) | bitmap: n bits | address: ceil(log2 n) bits each
               | gap: a 5-bit Rice parameter b, then the Rice codes of the distances between non-zero entries
    table      the quantizer's scale or codebook, 32 bits per number       (quantizers only)
    values     at the positions (dense: all n entries): float32 without a quantizer; else the symbols in
               fixed width ceil(log2 A) | Huffman (a 6-bit code length per symbol, then the codewords)
               | auto (a 1-bit flag, then whichever of the two is shorter)

Top-k with error feedback: Stich et al., "Sparsified SGD with Memory", NeurIPS 2018. QSGD: Alistarh et al.,
"QSGD: Communication-Efficient SGD via Gradient Quantization and Encoding", NeurIPS 2017. K-means weight
quantization and Huffman coding: Han et al., "Deep Compression", ICLR 2016, the recipe FEDZIP applies to
client updates (Malekijoo et al., arXiv:2102.01593).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
import pandas as pd
import torch

from .. import validation as V
from ..runtime import cpu_threads
from ..models import FlatModel
from .base import Channel, Tensors, tensor_bits
from .huffman import LENGTH_BITS, RICE_BITS, BitReader, BitWriter, code_lengths, huffman_bits, rice_parameter
from .quantizers import QSGD, KMeans, Quantizer, TopK, UniformQuantizer

FLOAT_BITS = 32
COUNT_BITS = 32
POSITION_CODES = ("dense", "bitmap", "address", "gap")
VALUE_CODES = ("fixed", "huffman", "auto")


# ------------------------------------------------------------------------------------------- the pipeline
def _width(alphabet: int) -> int:
    """Bits of a fixed-width symbol from an alphabet of this size."""
    return (alphabet - 1).bit_length()


def _gaps(support: torch.Tensor) -> torch.Tensor:
    """(M, n) distance from each entry to the previous entry in the support (or to position -1)."""
    index = torch.arange(support.shape[1], device=support.device)
    last = torch.where(support, index, -1).cummax(dim=1).values  # (M, n) last support position <= i
    previous = torch.cat([torch.full_like(last[:, :1], -1), last[:, :-1]], dim=1)
    return index - previous


def _position_bits(support: torch.Tensor, code: str) -> torch.Tensor:
    """(M,) bits of the positions of each row's non-zero entries under a position code."""
    n = support.shape[1]
    nnz = support.sum(1)
    if code == "dense":
        return torch.zeros_like(nnz)
    if code == "bitmap":
        return COUNT_BITS + torch.full_like(nnz, n)
    if code == "address":
        return COUNT_BITS + nnz * _width(n)
    rest = torch.where(support, _gaps(support) - 1, 0)  # (M, n) g - 1 at the non-zero entries
    # Rice code of each gap: ((g - 1) >> b) + 1 + b bits, with the b that minimises the row's total
    rice = torch.stack([(rest >> b).sum(1) + nnz * (1 + b) for b in range(_width(n) + 1)], dim=1)  # (M, b)
    return COUNT_BITS + RICE_BITS + rice.amin(1)


@dataclass(frozen=True)
class Compressor:
    """Sparsify, quantize and encode each layer; `__call__` returns what arrives and the exact bits sent.

    positions: how the non-zero entries are located ("dense" sends every entry, zeros included).
    values: how quantized symbols are written ("fixed", "huffman", or "auto", the shorter of the two).
    sparsify_biases: False keeps 1-D layers (biases) dense, as FEDZIP does."""

    sparsifier: TopK | None = None
    quantizer: Quantizer | None = None
    positions: str = "dense"
    values: str = "auto"
    sparsify_biases: bool = True
    label: str = ""  # the name shown in histories and legends

    def __post_init__(self) -> None:
        if self.positions not in POSITION_CODES:
            raise ValueError(f"positions must be one of {POSITION_CODES}, got {self.positions!r}")
        if self.values not in VALUE_CODES:
            raise ValueError(f"values must be one of {VALUE_CODES}, got {self.values!r}")
        if self.positions != "dense" and self.quantizer is not None and self.quantizer.zero is None:
            raise ValueError(f"positions={self.positions!r} needs a quantizer with an exact zero "
                             "(KMeans(pin_zero=True), UniformQuantizer or QSGD)")

    def __str__(self) -> str:
        return self.label or repr(self)

    @property
    def lossless(self) -> bool:
        """Whether the receiver gets exactly what was sent (no sparsifier, no quantizer)."""
        return self.sparsifier is None and self.quantizer is None

    @property
    def stochastic(self) -> bool:
        """Whether the compressor draws random numbers (it then needs a generator)."""
        return self.quantizer is not None and self.quantizer.stochastic

    def _symbols(self, v: torch.Tensor, generator: torch.Generator | None,
                 bias: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Symbols (floats without a quantizer) (M, n), table (M, T) and the non-zero mask (M, n)."""
        if v.dtype != torch.float32:
            raise ValueError(f"compressors take float32 messages, got {v.dtype}")
        V.finite_values("the message to compress", v)  # NaN or inf would be quantized into garbage
        if self.sparsifier is not None and (self.sparsify_biases or not bias):
            v = torch.where(self.sparsifier.mask(v), v, 0)  # (M, n), dropped entries are exactly 0
        if self.quantizer is None:
            return v, v.new_zeros(v.shape[0], 0), v != 0
        symbols, table = self.quantizer.quantize(v, generator)
        zero = self.quantizer.zero
        support = symbols != zero if zero is not None else torch.ones_like(symbols, dtype=torch.bool)
        return symbols, table, support

    def _decoded(self, symbols: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
        """What the receiver reconstructs from symbols and table."""
        return symbols if self.quantizer is None else self.quantizer.dequantize(symbols, table)

    def _symbol_bits(self, symbols: torch.Tensor, sent: torch.Tensor) -> torch.Tensor:
        """(M,) bits of the quantized symbols at the `sent` entries, in the chosen value code."""
        alphabet = self.quantizer.alphabet
        fixed = sent.sum(1) * _width(alphabet)
        if self.values == "fixed":
            return fixed
        counts = torch.zeros(symbols.shape[0], alphabet, dtype=torch.long, device=symbols.device)
        counts.scatter_add_(1, symbols, sent.long())  # (M, A) occurrences of each symbol
        coded = torch.tensor([huffman_bits(row) for row in counts.cpu().numpy()], device=symbols.device)
        huffman = alphabet * LENGTH_BITS + coded
        return huffman if self.values == "huffman" else 1 + torch.minimum(fixed, huffman)

    def __call__(self, v: torch.Tensor, generator: torch.Generator | None = None,
                 bias: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """Compress each row of one layer (M, n): (what the receiver decodes (M, n), bits per row (M,))."""
        if v.shape[1] == 0:  # an empty layer: nothing to send
            return v.clone(), torch.zeros(v.shape[0], dtype=torch.long, device=v.device)
        symbols, table, support = self._symbols(v, generator, bias)
        sent = support if self.positions != "dense" else torch.ones_like(support)
        bits = _position_bits(support, self.positions) + table.shape[1] * FLOAT_BITS
        if self.quantizer is None:
            bits = bits + sent.sum(1) * FLOAT_BITS
        else:
            bits = bits + self._symbol_bits(symbols, sent)
        return self._decoded(symbols, table), bits

    # ------------------------------------------------------------------------------ the real bitstream
    def encode(self, v: torch.Tensor, generator: torch.Generator | None = None, bias: bool = False) -> np.ndarray:
        """Write one layer (n,) as a bitstream (0/1 uint8 array), exactly as `__call__` counts it."""
        symbols, table, support = (t[0].cpu().numpy() for t in self._symbols(v[None], generator, bias))
        where = np.flatnonzero(support) if self.positions != "dense" else np.arange(len(symbols))
        out = BitWriter()
        if self.positions != "dense":
            out.uint(len(where), COUNT_BITS)
        if self.positions == "bitmap":
            out.uint(support, 1)
        elif self.positions == "address":
            out.uint(where, _width(len(symbols)))
        elif self.positions == "gap":
            gaps = np.diff(where, prepend=-1)
            b = rice_parameter(gaps, _width(len(symbols)))
            out.uint(b, RICE_BITS)
            out.rice(gaps, b)
        out.float32(table)
        sent = symbols[where]
        if self.quantizer is None:
            out.float32(sent)
            return out.bits()
        alphabet = self.quantizer.alphabet
        counts = np.bincount(sent, minlength=alphabet)
        lengths = code_lengths(counts)
        huffman = alphabet * LENGTH_BITS + int(lengths @ counts)
        use_huffman = self.values == "huffman" or (self.values == "auto" and huffman < len(sent) * _width(alphabet))
        if self.values == "auto":
            out.uint(int(use_huffman), 1)
        if use_huffman:
            out.uint(lengths, LENGTH_BITS)
            out.huffman(sent, lengths)
        else:
            out.uint(sent, _width(alphabet))
        return out.bits()

    def decode(self, bits: np.ndarray, n: int) -> torch.Tensor:
        """Read one layer of n entries back from its bitstream: the same values `__call__` returns."""
        read = BitReader(bits)
        decoded = self.read(read, n)
        if not read.exhausted():
            raise ValueError(f"bitstream has {len(read.bits) - read.position} bits left over after decoding")
        return decoded

    def read(self, read: BitReader, n: int) -> torch.Tensor:
        """Read the next layer of n entries from a bitstream (layers follow one another on the wire)."""
        if self.positions == "dense":
            where = np.arange(n)
        else:
            count = int(read.uint(1, COUNT_BITS)[0])
            if self.positions == "bitmap":
                where = np.flatnonzero(read.uint(n, 1))
            elif self.positions == "address":
                where = read.uint(count, _width(n))
            else:
                where = np.cumsum(read.rice(count, int(read.uint(1, RICE_BITS)[0]))) - 1
        table = torch.from_numpy(read.float32(0 if self.quantizer is None else self.quantizer.table_size).copy())
        if self.quantizer is None:
            values = np.zeros(n, dtype=np.float32)
            values[where] = read.float32(len(where))
            symbols = torch.from_numpy(values)
        else:
            alphabet = self.quantizer.alphabet
            use_huffman = self.values == "huffman" or (self.values == "auto" and read.uint(1, 1)[0] == 1)
            if use_huffman:
                sent = read.huffman(len(where), read.uint(alphabet, LENGTH_BITS))
            else:
                sent = read.uint(len(where), _width(alphabet))
            full = np.full(n, self.quantizer.zero if self.quantizer.zero is not None else 0, dtype=np.int64)
            full[where] = sent
            symbols = torch.from_numpy(full)
        return self._decoded(symbols[None], table[None])[0]


# ------------------------------------------------------------------------------------------ named recipes
def top_k(fraction: float, positions: str = "gap") -> Compressor:
    """Plain top-z sparsification: each layer's largest `fraction` of entries, as float32 with their positions."""
    suffix = "" if positions == "gap" else f", {positions}"
    return Compressor(TopK(fraction), positions=positions, label=f"top-k({fraction:g}{suffix})")


def uniform(bits: int = 8) -> Compressor:
    """Deterministic uniform quantization to `bits` bits per entry (entropy-coded when that is shorter)."""
    return Compressor(quantizer=UniformQuantizer(bits), label=f"uniform({bits} bits)")


def qsgd(levels: int = 4) -> Compressor:
    """QSGD: unbiased stochastic quantization to `levels` levels per sign, entropy-coded."""
    return Compressor(quantizer=QSGD(levels), label=f"QSGD({levels} levels)")


def kmeans(clusters: int = 8) -> Compressor:
    """K-means (codebook) quantization of each layer with `clusters` centroids, one pinned at zero."""
    return Compressor(quantizer=KMeans(clusters), label=f"k-means({clusters})")


FEDZIP_ENCODERS = {"huffman": "dense", "address": "address", "gap": "gap"}  # encoder -> position code


def fedzip(z: float = 0.1, clusters: int = 3, encoder: str = "huffman") -> Compressor:
    """FEDZIP: top-z sparsification (weights only), k-means with a zero centroid, then Huffman-coded symbols.

    The zero centroid also absorbs the small survivors of top-z, so fewer than z of the entries may arrive
    non-zero (on heavy-tailed updates far fewer: k-means alone zeroes most entries).
    encoder "huffman" codes every entry's symbol (the dropped zeros take the shortest codeword);
    "address" and "gap" send the positions of the non-zero entries and Huffman-code their symbols."""
    if encoder not in FEDZIP_ENCODERS:
        raise ValueError(f"encoder must be one of {tuple(FEDZIP_ENCODERS)}, got {encoder!r}")
    name = f"FEDZIP(z={z:g}, k={clusters}" + ("" if encoder == "huffman" else f", {encoder}") + ")"
    return Compressor(TopK(z), KMeans(clusters), positions=FEDZIP_ENCODERS[encoder], values="huffman",
                      sparsify_biases=False, label=name)


@dataclass(frozen=True)
class Method:
    """A named compression method for panels: what its one level means, the levels offered, its default."""

    level_name: str
    levels: tuple
    default: float | int | None
    factory: Callable[..., Compressor]


COMPRESSORS = {
    "none": Method("", (None,), None, lambda level: Compressor(label="none")),
    "top-k": Method("fraction kept", (0.5, 0.2, 0.1, 0.05, 0.02, 0.01), 0.1, top_k),
    "uniform": Method("bits per entry", (16, 8, 6, 4, 3, 2), 8, uniform),
    "qsgd": Method("levels", (64, 16, 8, 4, 2, 1), 4, qsgd),
    "k-means": Method("clusters", (64, 16, 8, 4, 3), 8, kmeans),
    "fedzip": Method("z (fraction kept)", (0.5, 0.2, 0.1, 0.05, 0.02, 0.01), 0.1, fedzip),
}


def make_compressor(method: str, level: float | int | None = None) -> Compressor:
    """A compressor by method name and level (its meaning depends on the method; None: the method's default)."""
    if method not in COMPRESSORS:
        raise ValueError(f"method must be one of {tuple(COMPRESSORS)}, got {method!r}")
    entry = COMPRESSORS[method]
    return entry.factory(entry.default if level is None else level)


# ------------------------------------------------------------------------------------------- the channel
Layers = Sequence[tuple[int, bool]]  # (entries, is_bias) per layer, in the order of the flat parameter vector


def layers_of(model: FlatModel | Sequence[int] | None) -> Layers | None:
    """Layer sizes and bias flags of a model (1-D parameters are biases), or of a plain list of sizes."""
    if model is None:
        return None
    if isinstance(model, FlatModel):
        return [(numel, len(shape) == 1) for numel, shape in zip(model.numels, model.shapes)]
    sizes = [int(n) for n in model]
    if not sizes or min(sizes) < 1:
        raise ValueError(f"layers must be positive sizes, got {list(model)}")
    return [(n, False) for n in sizes]


class CompressedChannel(Channel):
    """A link that compresses each message layer by layer and counts the bits of the encoded layers.

    up / down: compressors for what clients send and what the server broadcasts (None: lossless).
    layers: the model (or its layer sizes), so message vectors of its size are compressed per layer;
        other messages are compressed as one block.
    error_feedback: each client adds what compression dropped last time to its next message (Stich et
        al. 2018), so nothing is lost for good. The memory is per client, so `uplink` must be told the
        senders' ids (`clients=`); `reset()` clears it before a new run."""

    def __init__(self, up: Compressor | None = None, down: Compressor | None = None, *,
                 layers: FlatModel | Sequence[int] | None = None, error_feedback: bool = False):
        self.up, self.down = up, down
        self.layers = layers_of(layers)
        self.error_feedback = error_feedback
        self.memory: dict[str, torch.Tensor] = {}  # message key -> (N, ...) residual per client id
        self.last_up: Tensors | None = None  # the last messages sent up, as the clients produced them (to inspect)
        self.last_down: Tensors | None = None  # the last broadcast, as the server produced it

    def __str__(self) -> str:
        parts = [f"up={self.up}" if self.up else "", f"down={self.down}" if self.down else "",
                 "error feedback" if self.error_feedback else ""]
        return ", ".join(p for p in parts if p) or "lossless"

    def __repr__(self) -> str:  # everything that decides what arrives (the memory is cleared when a run starts)
        return (f"CompressedChannel(up={self.up!r}, down={self.down!r}, layers={self.layers!r}, "
                f"error_feedback={self.error_feedback})")

    def reset(self) -> None:
        """Forget every client's error-feedback memory (call before a new run)."""
        self.memory = {}

    def compress(self, compressor: Compressor, v: torch.Tensor,
                 generator: torch.Generator | None) -> tuple[torch.Tensor, int]:
        """Compress rows (M, ...) layer by layer: (what arrives, total bits)."""
        flat = v.reshape(v.shape[0], -1)  # (M, P)
        if not torch.isfinite(flat).all():  # a diverged client: pass it on, so the federation can report it
            return v, tensor_bits({"v": v}, leading=1) * v.shape[0]
        layers = self.layers
        if layers is None or sum(n for n, _ in layers) != flat.shape[1]:
            layers = [(flat.shape[1], False)]
        parts, bits = [], 0
        for block, (_, bias) in zip(flat.split([n for n, _ in layers], dim=1), layers):
            decoded, layer_bits = compressor(block, generator, bias)
            parts.append(decoded)
            bits += int(layer_bits.sum())
        return torch.cat(parts, dim=1).view_as(v), bits

    def _send(self, compressor: Compressor | None, messages: Tensors,
              rng: np.random.Generator) -> tuple[Tensors, dict[str, int]]:
        """Compress every floating tensor of stacked messages; others pass as they are."""
        if compressor is None:
            return messages, {k: tensor_bits({k: v}, leading=1) * v.shape[0] for k, v in messages.items()}
        generator = None
        if compressor.stochastic:  # a child stream: the federation's own draws (client sampling) stay the same
            device = next(iter(messages.values())).device
            seed = int(rng.spawn(1)[0].integers(2**63))
            generator = torch.Generator(device=device).manual_seed(seed)
        out, bits = {}, {}
        for key, v in messages.items():
            if v.is_floating_point():
                out[key], bits[key] = self.compress(compressor, v, generator)
            else:
                out[key], bits[key] = v, tensor_bits({key: v}, leading=1) * v.shape[0]
        return out, bits

    def uplink(self, messages: Tensors, rng: np.random.Generator,
               clients: torch.Tensor | None = None) -> tuple[Tensors, int]:
        """Clients' stacked messages (M, ...) to the server, compressed; `clients` (M,) ids for error feedback."""
        self.last_up = messages
        if not self.error_feedback:
            out, bits = self._send(self.up, messages, rng)
            return out, sum(bits.values())
        if clients is None:
            raise ValueError("error_feedback needs the senders' ids: call uplink(messages, rng, clients=ids)")
        wanted = {k: v + self._residual(k, v, clients) if v.is_floating_point() else v
                  for k, v in messages.items()}  # (M, ...) m_i + e_i
        out, bits = self._send(self.up, wanted, rng)
        for key in self.memory:
            self.memory[key][clients] = wanted[key] - out[key]  # e_i <- (m_i + e_i) - C(m_i + e_i)
        return out, sum(bits.values())

    def _residual(self, key: str, v: torch.Tensor, clients: torch.Tensor) -> torch.Tensor:
        """The senders' error-feedback memory for message `key`, grown with zeros for ids not seen yet."""
        size = int(clients.max()) + 1
        memory = self.memory.get(key, v.new_zeros(0, *v.shape[1:]))
        if memory.shape[0] < size:
            memory = torch.cat([memory, v.new_zeros(size - memory.shape[0], *v.shape[1:])])
        self.memory[key] = memory
        return memory[clients]

    def downlink(self, down: Tensors, n_receivers: int, rng: np.random.Generator) -> tuple[Tensors, int]:
        """The server's broadcast, compressed once and sent to each of `n_receivers` clients."""
        self.last_down = down
        stacked = {k: v[None] for k, v in down.items()}  # (1, ...): one message
        out, bits = self._send(self.down, stacked, rng)
        return {k: v[0] for k, v in out.items()}, sum(bits.values()) * n_receivers


def encode_update(compressor: Compressor, update: torch.Tensor, layers: Layers,
                  generator: torch.Generator | None = None) -> bytes:
    """One client's whole update (P,) on the wire: its layers' bitstreams one after another, packed into bytes."""
    blocks = update.split([n for n, _ in layers])
    bits = [compressor.encode(block, generator, bias) for block, (_, bias) in zip(blocks, layers)]
    return np.packbits(np.concatenate(bits)).tobytes()


def decode_update(compressor: Compressor, payload: bytes, layers: Layers) -> torch.Tensor:
    """What the server reads from `encode_update`'s bytes: the decoded update (P,)."""
    read = BitReader(np.unpackbits(np.frombuffer(payload, dtype=np.uint8)))
    update = torch.cat([compressor.read(read, n) for n, _ in layers])
    if len(read.bits) - read.position >= 8:
        raise ValueError(f"payload has {len(read.bits) - read.position} bits left over after decoding")
    return update


def wire_report(update: torch.Tensor, compressors: Sequence[Compressor], model: FlatModel) -> pd.DataFrame:
    """Each compressor on one client update (P,) for real: payload bytes, ratio to float32, exact round trip.

    "nonzero" is the fraction of entries that arrive non-zero; "round_trip" is True when decoding the
    payload gives exactly what the channel delivers to the server."""
    with cpu_threads(1):  # one small update: extra intra-op threads only add synchronisation
        return pd.DataFrame([_wire_row(update, compressor, model) for compressor in compressors])


def _wire_row(update: torch.Tensor, compressor: Compressor, model: FlatModel) -> dict:
    """One row of `wire_report`: the channel's delivery and bit count against the real payload."""
    def draws() -> torch.Generator | None:  # the same random draws for the channel and the encoder
        return torch.Generator(device=update.device).manual_seed(0) if compressor.stochastic else None

    channel = CompressedChannel(layers=model)
    delivered, bits = channel.compress(compressor, update[None], draws())
    payload = encode_update(compressor, update, channel.layers, draws())
    decoded = decode_update(compressor, payload, channel.layers)
    return {"compressor": str(compressor), "bytes": len(payload), "bits": bits,
            "ratio": 4 * update.numel() / len(payload), "nonzero": (delivered != 0).float().mean().item(),
            "round_trip": torch.equal(decoded, delivered[0].cpu())}
