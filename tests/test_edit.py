"""Chapter 61 (EDiT, A-EDiT): the corruption claim needs the penalty; the chapter's helpers."""
import math

import pandas as pd
import pytest

from flbook import protocol
from flbook.chapters import ch61_edit as chapter

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
