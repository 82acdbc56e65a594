"""Chapter 61 (EDiT, A-EDiT): the corruption claim needs the penalty; the chapter's helpers."""
import math
from dataclasses import replace

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402

from flbook import protocol  # noqa: E402
from flbook.chapters import ch61_edit as chapter  # noqa: E402
from flbook.local_sgd import markov_corpus, train  # noqa: E402
from flbook.transformer import causal_lm  # noqa: E402

TINY = {"n_workers": 3, "interval": 2, "syncs": 7, "corrupt_at": (6, 7), "seeds": 3, "tune": False, "lr": 3e-3,
        "methods": ("DiLoCo", "EDiT")}


def _corruption_verdict(penalty: bool) -> str:
    history = chapter.run({**TINY, "penalty": penalty}, progress=False)
    table = chapter.claims(history)
    return table.set_index("claim").filter(like="corrupted", axis=0)["verdict"].iloc[0]


def test_the_penalty_makes_edit_beat_diloco_with_a_corrupted_worker():
    assert _corruption_verdict(True) == "holds"


def test_without_the_penalty_the_corruption_claim_fails():
    assert _corruption_verdict(False) == "does not hold"  # EDiT without its penalty is DiLoCo


def test_time_to_target_and_final_loss():
    run = pd.DataFrame({"time": [4.0, 8.0, 12.0], "loss": [2.0, 1.5, 1.2], "inner_steps": [4, 8, 12]})
    assert chapter.time_to_target(run, 1.5) == 8.0 and math.isnan(chapter.time_to_target(run, 1.0))
    assert chapter.final_loss(run, 4) == pytest.approx((2.0 + 1.5 + 1.2) / 3)
    assert chapter.final_loss(run, 8) == pytest.approx((2.0 + 1.2) / 2)
    assert protocol.verdict([float("nan"), -1.0, -2.0], "less") == "inconclusive"


def test_the_corpus_needs_context_and_bad_methods_are_named():
    data = chapter.corpus()
    assert data["entropy"] < data["unigram"] - 0.5  # a model must use its context to beat the unigram loss
    with pytest.raises(ValueError, match="methods"):
        chapter.methods({**chapter.DEFAULTS, "methods": ("SGD",)})


def test_local_sgd_is_the_plain_average_whatever_the_outer_knobs():
    """The chapter's Local SGD ignores the panel's outer lr, momentum and penalty: with one inner SGD step per sync
    it is data-parallel SGD, which DiLoCo at the same knobs is not."""
    table = chapter.methods({**chapter.DEFAULTS, "interval": 1, "outer_lr": 0.7, "momentum": 0.8, "penalty": True})
    tokens, _ = markov_corpus(64, 8, 8, seed=0)
    model = causal_lm(8, 8, dim=16, depth=1)
    loss = {name: train(replace(table[name], inner="sgd"), model, tokens, tokens[:16], n_workers=3, syncs=4,
                        batch_size=4, lr=0.1, seed=(0, 1)).loss.to_numpy() for name in ("data parallel", "Local SGD",
                                                                                       "DiLoCo")}
    assert np.allclose(loss["Local SGD"], loss["data parallel"], atol=1e-5)
    assert not np.allclose(loss["DiLoCo"], loss["data parallel"], atol=1e-3)


def test_stream_yields_after_every_run_and_run_is_its_last():
    values = {**TINY, "methods": ("Local SGD", "EDiT"), "seeds": 1, "syncs": 3}
    steps = list(chapter.stream(values, progress=False))
    assert [sorted(set(zip(h.scenario, h.method))) for h in steps[:2]] == [
        [("clean", "Local SGD")], [("clean", "EDiT"), ("clean", "Local SGD")]]
    assert len(steps) == 4 and steps[0].attrs["target"] == steps[-1].attrs["target"]
    plt.close(chapter.figure(steps[0]))  # the clean runs alone draw
    pd.testing.assert_frame_equal(steps[-1], chapter.run(values, progress=False))
