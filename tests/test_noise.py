import math

import numpy as np
import pandas as pd
import pytest
import torch

from conftest import equal_parts
from flbook import Federation
from flbook.algorithms import FedAvg
from flbook.algorithms.base import LocalContext
from flbook.channel import ARRIVED, Channel, NoisyChannel, delivered
from flbook.executors import BatchedExecutor, Cohort, LoopExecutor


def rng(seed=0):
    return np.random.default_rng(seed)


def stacked_messages(m=6, p=4000, seed=0):
    """Rows of very different power, so a per-message SNR and a global one would differ."""
    g = torch.Generator().manual_seed(seed)
    scales = torch.logspace(-2, 2, m)[:, None]
    return {"delta": torch.randn(m, p, generator=g) * scales, "count": torch.arange(m)}


@pytest.mark.parametrize("links", ["up", "down", "both"])
def test_infinite_snr_and_no_loss_is_the_lossless_channel(links):
    clean, noisy = Channel(), NoisyChannel(math.inf, 0.0, links)
    messages, down = stacked_messages(), {"x": torch.randn(50)}
    assert noisy.uplink(messages, rng()) == clean.uplink(messages, rng())
    assert noisy.downlink(down, 7, rng()) == clean.downlink(down, 7, rng())
    assert not noisy.down_per_client


def test_clean_noisy_channel_gives_the_same_federated_run(digits_data):
    parts = equal_parts(len(digits_data.y_train), n_clients=6, per_client=60)
    runs = [Federation(digits_data, parts, "logistic", local_steps=2, participation=0.5, channel=channel)
            .run(FedAvg(), 3, progress=False) for channel in (None, NoisyChannel(links="both"))]
    cols = ["round", "test_acc", "test_loss", "bytes_up", "bytes_down"]
    pd.testing.assert_frame_equal(runs[0][cols], runs[1][cols])


@pytest.mark.parametrize("snr_db", [0.0, 10.0, 25.0])
def test_snr_is_honoured_per_message(snr_db):
    messages = stacked_messages()
    out, _ = NoisyChannel(snr_db).uplink(messages, rng())
    signal = messages["delta"].square().mean(1)
    noise = (out["delta"] - messages["delta"]).square().mean(1)
    assert torch.allclose(noise / signal, torch.full_like(signal, 10 ** (-snr_db / 10)), rtol=0.08)
    assert torch.equal(out["count"], messages["count"])  # integer tensors carry no noise


def test_downlink_noise_is_drawn_per_receiver():
    x = torch.randn(20000)
    channel = NoisyChannel(snr_db=10.0, links="down")
    down, bits = channel.downlink({"x": x}, 3, rng())
    assert channel.down_per_client and down["x"].shape == (3, 20000)
    assert bits == Channel().downlink({"x": x}, 3, rng())[1]
    noise = down["x"] - x  # (3, P)
    assert torch.allclose(noise.square().mean(1) / x.square().mean(), torch.full((3,), 0.1), rtol=0.05)
    assert noise.corrcoef()[0, 1:].abs().max() < 0.05  # independent draws
    up, _ = channel.uplink(stacked_messages(), rng())
    assert torch.equal(up["delta"], stacked_messages()["delta"])  # the uplink stays clean


def test_lost_messages_are_paid_for_zeroed_and_masked():
    messages = {"delta": torch.randn(4000, 3) + 5}
    out, bits = NoisyChannel(drop_prob=0.3).uplink(messages, rng())
    arrived = out[ARRIVED]
    assert bits == Channel().uplink(messages, rng())[1]
    assert abs(1 - arrived.float().mean().item() - 0.3) < 0.03
    assert (out["delta"][~arrived] == 0).all() and torch.equal(out["delta"][arrived], messages["delta"][arrived])
    kept, ids = delivered(out, torch.arange(4000))
    assert set(kept) == {"delta"} and torch.equal(ids, torch.nonzero(arrived).flatten())
    assert torch.equal(kept["delta"], messages["delta"][arrived])
    assert delivered(messages, ids)[0] is messages


def test_same_seed_same_noise_and_sampling_stream_untouched():
    channel, messages = NoisyChannel(5.0, 0.2, "both"), stacked_messages()
    first, second = channel.uplink(messages, rng(3))[0], channel.uplink(messages, rng(3))[0]
    assert all(torch.equal(first[k], second[k]) for k in first)
    other = channel.uplink(messages, rng(4))[0]
    assert not torch.equal(first["delta"], other["delta"])
    used = rng(3)
    channel.uplink(messages, used)
    channel.downlink({"x": torch.ones(5)}, 2, used)
    assert np.array_equal(used.random(5), rng(3).random(5))  # client sampling sees the same numbers


def test_noisy_uplink_and_total_loss_in_a_federation(digits_data):
    parts = equal_parts(len(digits_data.y_train), n_clients=6, per_client=60)

    def run(channel):
        fed = Federation(digits_data, parts, "logistic", local_steps=2, lr=0.5, channel=channel)
        return fed.run(FedAvg(), 4, progress=False)

    clean, noisy, lost = run(None), run(NoisyChannel(snr_db=-20.0)), run(NoisyChannel(drop_prob=1.0))
    assert noisy.test_acc.iloc[-1] < clean.test_acc.iloc[-1] - 0.05  # noise 100 times the update's power
    assert lost.test_loss.nunique() == 1  # nothing arrives: the global model never moves
    assert list(lost.bytes_up) == list(clean.bytes_up)


@pytest.mark.parametrize("executor", [LoopExecutor(), BatchedExecutor()])
def test_per_receiver_downlink_runs_through_the_executors(digits_data, executor):
    parts = equal_parts(len(digits_data.y_train), n_clients=4, per_client=40)
    fed = Federation(digits_data, parts, "logistic", local_steps=2, batch_size=20)
    ids = torch.arange(4)
    cohort = Cohort(fed.x_train, fed.y_train, fed.sample_batches(ids, None, torch.Generator().manual_seed(0)))
    ctx = LocalContext(fed.model, fed.lr, 0.0, FedAvg().loss)
    down = {"x": fed.initial_model()}
    copies, _ = NoisyChannel(snr_db=300.0, links="down").downlink(down, 4, rng())
    broadcast, _ = executor(FedAvg(), down, {}, cohort, ctx)
    per_client, _ = executor(FedAvg(), copies, {}, cohort, ctx, down_per_client=True)
    assert torch.allclose(per_client["delta"], broadcast["delta"], atol=1e-6)


def test_base_channel_sets_the_bits_and_sees_the_senders():
    class HalfPrecision(Channel):
        senders = None

        def uplink(self, messages, rng, clients=None):
            self.senders = clients
            return messages, super().uplink(messages, rng)[1] // 2

    messages, base = stacked_messages(), HalfPrecision()
    expected = HalfPrecision().uplink(messages, rng())[1]
    assert NoisyChannel(10.0, base=base).uplink(messages, rng(), clients=torch.arange(6))[1] == expected
    assert torch.equal(base.senders, torch.arange(6))  # e.g. for a compressor's per-client error feedback


@pytest.mark.parametrize("kwargs, message", [
    ({"drop_prob": 1.5}, r"drop_prob must be in \[0, 1\], got 1.5"),
    ({"links": "sideways"}, r"links must be one of \('up', 'down', 'both'\)"),
    ({"snr_db": math.nan}, r"snr_db .*must be in \[-100, inf\], got nan"),
    ({"snr_db": -math.inf}, r"snr_db .*got -inf"),
    ({"snr_db": -1e6}, r"snr_db .*got -1000000"),
])
def test_bad_arguments_name_the_parameter(kwargs, message):
    with pytest.raises(ValueError, match=message):
        NoisyChannel(**kwargs)
