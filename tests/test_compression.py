import numpy as np
import pandas as pd
import pytest
import torch

from conftest import equal_parts
from flbook import Federation
from flbook.algorithms import FedAvg, Scaffold
from flbook.channel.compression import (COMPRESSORS, CompressedChannel, Compressor, fedzip, kmeans, layers_of,
                                        make_compressor, qsgd, top_k, uniform)
from flbook.channel.quantizers import QSGD, KMeans, TopK, UniformQuantizer
from flbook.models import mlp

PIPELINES = [
    Compressor(),
    top_k(0.1), top_k(0.1, "bitmap"), top_k(0.1, "address"), top_k(0.3, "dense"),
    uniform(8), uniform(2), qsgd(4), qsgd(1), kmeans(8), kmeans(3),
    fedzip(0.1), fedzip(0.05, encoder="gap"), fedzip(0.05, encoder="address"),
    Compressor(TopK(k=3), UniformQuantizer(4), positions="gap", values="fixed"),
    Compressor(TopK(0.2), QSGD(2), positions="bitmap", values="huffman"),
    Compressor(quantizer=KMeans(4, pin_zero=False), values="fixed"),
]


def _generator(seed=0):
    return torch.Generator().manual_seed(seed)


def _rows(seed=0, m=3, n=500):
    return torch.randn(m, n, generator=_generator(seed)) * torch.rand(m, 1, generator=_generator(seed + 1))


EDGE_ROWS = {
    "gaussian": _rows()[0],
    "all zero": torch.zeros(40),
    "one entry": torch.tensor([-0.75]),
    "constant": torch.full((17,), 0.25),
    "two values": torch.tensor([0.0, 1.0, 0.0, 0.0, 1.0, 0.0]),
}


@pytest.mark.parametrize("compressor", PIPELINES, ids=str)
@pytest.mark.parametrize("row", EDGE_ROWS.values(), ids=EDGE_ROWS.keys())
def test_counted_bits_equal_the_bitstream_and_decoding_equals_the_output(compressor, row):
    decoded, bits = compressor(row[None], _generator())
    stream = compressor.encode(row, _generator())
    assert stream.dtype == np.uint8 and set(np.unique(stream)) <= {0, 1}
    assert len(stream) == int(bits[0])
    assert torch.equal(compressor.decode(stream, len(row)), decoded[0])


@pytest.mark.parametrize("compressor", PIPELINES, ids=str)
def test_rows_are_compressed_independently(compressor):
    rows = _rows(seed=3)
    decoded, bits = compressor(rows, _generator())
    if not compressor.stochastic:
        for i, row in enumerate(rows):
            alone, alone_bits = compressor(row[None])
            assert torch.equal(alone[0], decoded[i]) and int(alone_bits[0]) == int(bits[i])
    assert bits.shape == (len(rows),) and (bits > 0).all()


def test_lossless_pipelines_return_the_input_exactly():
    rows = _rows()
    for compressor in (Compressor(), top_k(1.0), top_k(1.0, "bitmap"), Compressor(TopK(k=10_000))):
        decoded, bits = compressor(rows)
        assert torch.equal(decoded, rows)
    assert compressor.lossless is False and Compressor().lossless
    assert Compressor()(rows)[1].tolist() == [32 * rows.shape[1]] * len(rows)


def test_top_k_keeps_exactly_the_largest_entries():
    rows = _rows(n=1000)
    for sparsifier in (TopK(0.05), TopK(k=7), TopK(k=5000)):
        mask = sparsifier.mask(rows)
        count = sparsifier.count(rows.shape[1])
        assert (mask.sum(1) == count).all()
        kept = torch.where(mask, rows.abs(), torch.inf).amin(1)
        dropped = torch.where(mask, -torch.inf, rows.abs()).amax(1)
        assert (kept >= dropped).all()
    assert TopK(0.05).count(1000) == 50 and TopK(0.001).count(10) == 1 and TopK(k=5000).count(1000) == 1000


def test_uniform_error_is_at_most_half_a_step():
    rows = _rows()
    for bits in (2, 4, 8):
        decoded, _ = Compressor(quantizer=UniformQuantizer(bits))(rows)
        step = rows.abs().amax(1, keepdim=True) / (2 ** (bits - 1) - 1)
        assert ((decoded - rows).abs() <= step / 2 * (1 + 1e-5)).all()
        assert all(len(r.unique()) <= 2**bits - 1 for r in decoded)


def test_qsgd_is_unbiased_and_reproducible():
    row = _rows(m=1, n=50)
    draws = Compressor(quantizer=QSGD(2))(row.expand(3000, -1), _generator())[0]  # rows draw independently
    scale = row.norm()
    assert ((draws.mean(0) - row[0]).abs() < 5 * scale / 2 / np.sqrt(3000)).all()  # within ~5 standard errors
    again = Compressor(quantizer=QSGD(2))(row, _generator(7))[0]
    assert torch.equal(again, Compressor(quantizer=QSGD(2))(row, _generator(7))[0])


def test_kmeans_codebook_sizes_zero_and_exact_cases():
    rows = _rows(n=400)
    for k in (2, 3, 8):
        decoded, _ = Compressor(quantizer=KMeans(k))(rows)
        assert all(len(r.unique()) <= k for r in decoded)
    sparse = torch.where(TopK(0.2).mask(rows), rows, 0)
    decoded, _ = Compressor(quantizer=KMeans(3))(sparse)
    assert (decoded[sparse == 0] == 0).all()  # the pinned zero keeps dropped entries dropped
    few = torch.tensor([[0.0, -2.0, 5.0, 5.0, 0.0, -2.0], [1.0, 2.0, 3.0, 4.0, 4.0, 1.0]])
    assert torch.equal(Compressor(quantizer=KMeans(3))(few[:1])[0], few[:1])  # 2 distinct non-zeros, 2 free
    assert torch.equal(Compressor(quantizer=KMeans(4, pin_zero=False))(few)[0], few)


def test_kmeans_lloyd_steps_do_not_increase_distortion():
    rows = _rows(n=300)
    errors = [(Compressor(quantizer=KMeans(4, iterations=i))(rows)[0] - rows).square().sum().item() for i in (0, 1, 4)]
    assert errors[0] >= errors[1] >= errors[2]


def test_entropy_coding_helps_skewed_symbols():
    rows = _rows(n=2000)
    fixed = Compressor(quantizer=QSGD(4), values="fixed")(rows, _generator())[1]
    coded = Compressor(quantizer=QSGD(4), values="huffman")(rows, _generator())[1]
    auto = Compressor(quantizer=QSGD(4), values="auto")(rows, _generator())[1]
    assert (coded < fixed).all() and torch.equal(auto, 1 + torch.minimum(coded, fixed))


def test_bad_settings_are_rejected():
    with pytest.raises(ValueError, match="exactly one of fraction and k"):
        TopK()
    with pytest.raises(ValueError, match="fraction must be in"):
        TopK(1.5)
    with pytest.raises(ValueError, match=r"bits must be an integer in \[2, 16\]"):
        UniformQuantizer(1)
    with pytest.raises(ValueError, match=r"clusters must be an integer in \[2, 256\]"):
        KMeans(1)
    with pytest.raises(ValueError, match="positions must be one of"):
        Compressor(positions="zip")
    with pytest.raises(ValueError, match="exact zero"):
        Compressor(TopK(0.1), KMeans(3, pin_zero=False), positions="gap")
    with pytest.raises(ValueError, match="float32"):
        Compressor()(torch.zeros(2, 3, dtype=torch.float64))
    with pytest.raises(ValueError, match="method must be one of"):
        make_compressor("gzip")
    with pytest.raises(ValueError, match="left over"):
        Compressor().decode(np.zeros(65, dtype=np.uint8), 2)


# ----------------------------------------------------------------------------------------------- channel
def test_layers_of_a_model_mark_biases():
    model = mlp(8, 3, hidden=(5,))
    assert layers_of(model) == [(40, False), (5, True), (15, False), (3, True)]
    with pytest.raises(ValueError, match="positive sizes"):
        layers_of([3, 0])


def test_channel_compresses_per_layer_and_sums_the_bits():
    model = mlp(8, 3, hidden=(5,))
    messages = {"delta": _rows(m=4, n=model.n_params), "count": torch.ones(4, dtype=torch.long)}
    compressor = fedzip(0.2)
    out, bits = CompressedChannel(compressor, layers=model).uplink(messages, np.random.default_rng(0))
    expected, parts = 0, []
    for block, (_, bias) in zip(messages["delta"].split([40, 5, 15, 3], dim=1), layers_of(model)):
        decoded, layer_bits = compressor(block, None, bias)
        parts.append(decoded)
        expected += int(layer_bits.sum())
    assert torch.equal(out["delta"], torch.cat(parts, 1))
    assert torch.equal(out["count"], messages["count"])
    assert bits == expected + 4 * 64
    bias = messages["delta"][:, 40:45]  # FEDZIP quantizes the bias layer but does not sparsify it
    assert torch.equal(out["delta"][:, 40:45], Compressor(quantizer=KMeans(3))(bias)[0])


def test_downlink_is_compressed_once_and_paid_per_receiver():
    channel = CompressedChannel(down=uniform(8))
    down = {"x": _rows(m=1, n=100)[0]}
    out, bits = channel.downlink(down, 5, np.random.default_rng(0))
    decoded, one = uniform(8)(down["x"][None])
    assert torch.equal(out["x"], decoded[0]) and bits == 5 * int(one[0])
    lossless, bits = CompressedChannel().downlink(down, 5, np.random.default_rng(0))
    assert torch.equal(lossless["x"], down["x"]) and bits == 5 * 100 * 32


def test_error_feedback_memory_telescopes():
    channel = CompressedChannel(top_k(0.05), error_feedback=True)
    rng = np.random.default_rng(0)
    sent_total = torch.zeros(2, 200)
    inputs_total = torch.zeros(2, 200)
    for t in range(6):
        clients = torch.tensor([1, 3]) if t % 2 == 0 else torch.tensor([3, 5])
        delta = _rows(seed=t, m=2, n=200)
        out, _ = channel.uplink({"delta": delta}, rng, clients=clients)
        if t % 2 == 0:  # follow clients 1 and 3 only in even rounds, when both send
            sent_total += out["delta"]
            inputs_total += delta
    memory = channel.memory["delta"]
    assert memory.shape == (6, 200)
    assert memory[[0, 2, 4]].abs().sum() == 0  # clients that never sent keep no memory
    # client 1 sent in rounds 0, 2, 4 only: what it meant to send = what arrived + what is still held back
    assert torch.allclose(inputs_total[0], sent_total[0] + memory[1], atol=1e-5)
    with pytest.raises(ValueError, match="clients=ids"):
        channel.uplink({"delta": delta}, rng)
    channel.reset()
    assert channel.memory == {}


def _federation(digits_data, participation=1.0, channel=None, model="logistic"):
    parts = equal_parts(len(digits_data.y_train), n_clients=6, per_client=60)
    return Federation(digits_data, parts, model, local_steps=2, batch_size=20, lr=0.2, participation=participation,
                      seed=2, channel=channel, executor="loop")


@pytest.mark.parametrize("compressor", [Compressor(), top_k(1.0), Compressor(TopK(k=10**6), positions="bitmap")],
                         ids=str)
def test_lossless_settings_equal_uncompressed_fedavg_exactly(digits_data, compressor):
    fed = _federation(digits_data, participation=0.5)
    reference = fed.run(FedAvg(), 3, progress=False, label="plain")
    fed.channel = CompressedChannel(compressor, layers=fed.model)
    compressed = fed.run(FedAvg(), 3, progress=False, label="compressed")
    assert torch.equal(fed.final_models["plain"], fed.final_models["compressed"])
    pd.testing.assert_series_equal(reference.test_loss, compressed.test_loss)
    if compressor.positions == "dense":
        pd.testing.assert_series_equal(reference.bytes_up, compressed.bytes_up)


def test_stochastic_compression_leaves_client_sampling_unchanged(digits_data):
    sampled = []

    class Spy(CompressedChannel):
        def uplink(self, messages, rng, clients=None):
            sampled.append(len(messages["delta"]))
            return super().uplink(messages, rng, clients)

    fed = _federation(digits_data, participation=0.5)
    reference = fed.run(FedAvg(), 3, progress=False)
    fed.channel = Spy(qsgd(2**14), layers=fed.model)  # fine enough that the model barely moves
    noisy = fed.run(FedAvg(), 3, progress=False)
    assert np.allclose(reference.test_acc, noisy.test_acc, atol=0.01)
    assert sampled == [3, 3, 3]


def test_history_bytes_are_the_channels_bits(digits_data):
    reported = []

    class Recording(CompressedChannel):
        def uplink(self, messages, rng, clients=None):
            out, bits = super().uplink(messages, rng, clients)
            reported.append(bits)
            return out, bits

    fed = _federation(digits_data, channel=Recording(fedzip(0.1), layers=mlp(64, 10, hidden=(16,))),
                      model=mlp(64, 10, hidden=(16,)))
    history = fed.run(Scaffold(), 3, progress=False)
    assert history.bytes_up.tolist() == [0, *(np.cumsum(reported) // 8)]
    assert history.bytes_up.iloc[-1] < history.bytes_down.iloc[-1] / 10  # Delta y and Delta c both compressed


# ------------------------------------------------------------------------------------------------ widgets
def test_every_method_builds_at_every_level():
    for method, entry in COMPRESSORS.items():
        for level in entry.levels:
            compressor = make_compressor(method, level)
            decoded, bits = compressor(_rows(m=1, n=64), _generator())
            assert decoded.shape == (1, 64) and int(bits[0]) > 0


def test_a_compressed_channel_can_be_the_base_of_a_noisy_link():
    from flbook.channel import NoisyChannel

    model = mlp(8, 3, hidden=(5,))
    base = CompressedChannel(uniform(8), layers=model)
    messages = {"delta": _rows(m=2, n=model.n_params)}
    clean, clean_bits = base.uplink(messages, np.random.default_rng(0))
    noisy, noisy_bits = NoisyChannel(snr_db=20.0, base=base).uplink(messages, np.random.default_rng(0))
    assert noisy_bits == clean_bits  # noise changes what arrives, not what was paid for
    assert not torch.equal(noisy["delta"], clean["delta"])


def test_error_feedback_in_a_federation_keeps_each_senders_residual(digits_data):
    fed = _federation(digits_data, participation=0.5)
    fed.channel = CompressedChannel(top_k(0.05), layers=fed.model, error_feedback=True)
    with_memory = fed.run(FedAvg(), 4, progress=False, label="ef")
    memory = fed.channel.memory["delta"]
    held = memory.abs().sum(1) > 0
    assert 0 < int(held.sum()) <= fed.n_clients  # only clients that have sent hold a residual
    fed.channel = CompressedChannel(top_k(0.05), layers=fed.model)
    without = fed.run(FedAvg(), 4, progress=False, label="plain")
    assert not torch.equal(fed.final_models["ef"], fed.final_models["plain"])
    dense = 4 * 3 * fed.model.n_params * 4  # 4 rounds x 3 senders x float32 parameters
    assert with_memory.bytes_up.iloc[-1] < dense / 5 and without.bytes_up.iloc[-1] < dense / 5


def test_direct_calls_refuse_non_finite_messages_instead_of_zeroing_them():
    from flbook.channel import fedzip, kmeans, uniform

    row = torch.tensor([[1.0, float("nan"), 2.0, 0.5]])
    for compressor in (kmeans(2), fedzip(0.5, 3), uniform(2)):
        with pytest.raises(ValueError, match="must hold only finite values, got 1 NaN"):
            compressor(row)


def test_qsgd_of_huge_but_finite_values_stays_finite():
    from flbook.channel import qsgd

    decoded, _ = qsgd(4)(torch.randn(1, 100, generator=torch.Generator().manual_seed(0)) * 1e37,
                         torch.Generator().manual_seed(0))
    assert torch.isfinite(decoded).all()


def test_empty_layers_pass_through():
    from flbook.channel import top_k, uniform

    for compressor in (top_k(1.0), uniform(8)):
        decoded, bits = compressor(torch.zeros(2, 0))
        assert decoded.shape == (2, 0) and bits.tolist() == [0, 0]


@pytest.mark.parametrize("make, message", [
    (lambda: TopK(k=2.5), "k must be an integer, got 2.5"),
    (lambda: UniformQuantizer(bits=2.5), "bits must be an integer, got 2.5"),
    (lambda: KMeans(clusters=2.5), "clusters must be an integer, got 2.5"),
    (lambda: QSGD(levels=float("nan")), "levels must be an integer, got nan"),
    (lambda: TopK(fraction=float("nan")), r"fraction must be in \(0, 1\], got nan"),
])
def test_fractional_counts_are_rejected_at_construction(make, message):
    with pytest.raises(ValueError, match=message):
        make()
