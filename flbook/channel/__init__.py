"""The link between server and clients: what arrives, and exactly how many bits it took.

`base` holds the lossless `Channel` and the delivery contract; `noise` the noisy and lossy links; `compression`
the compressors (the pipeline, its wire format and error feedback) built from `quantizers` (the sparsifier and
the quantizers); `huffman` the prefix codes they use.
"""
from .base import ARRIVED, Channel, delivered, tensor_bits
from .compression import (COMPRESSORS, CompressedChannel, Compressor, fedzip, kmeans, make_compressor, qsgd, top_k,
                          uniform)
from .quantizers import QSGD, KMeans, TopK, UniformQuantizer
from .noise import NoisyChannel

__all__ = ["ARRIVED", "Channel", "delivered", "tensor_bits", "COMPRESSORS", "QSGD", "CompressedChannel", "Compressor",
           "KMeans", "TopK", "UniformQuantizer", "fedzip", "kmeans", "make_compressor", "qsgd", "top_k", "uniform",
           "NoisyChannel"]
