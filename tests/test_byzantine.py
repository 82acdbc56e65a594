"""Chapter 40's claims at a tiny scale: NNM lifts a robust rule's worst case under heterogeneity; the mean breaks."""
import warnings

import pytest

from flbook import protocol, robust
from flbook.chapters import ch40_byzantine as C

ATTACKS = ("none", "sign flipping", "FOE (line search)")
TINY = dict(fs=[4], alphas=[0.3], seeds=(0, 1, 2), rounds=12, n_clients=20, local_steps=5)
LRS = {"mean": 0.3, "trimmed_mean": 0.3, "median": 0.3, "NNM + median": 0.3}


def _table(rules):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # the mean diverges under some attacks: scored as chance
        return C.grid(rules, ATTACKS, lrs=LRS, **TINY)


def test_nnm_lifts_the_worst_case_of_the_median_under_heterogeneity():
    table = _table([("median", False), ("median", True)])
    assert protocol.verdict(C.nnm_gain(table, "median")) == protocol.HOLDS


def test_without_its_nearest_neighbour_mixing_the_claim_fails(monkeypatch):
    """Breaking the key ingredient: NNM that leaves every message as it is turns NNM + median into the median."""
    monkeypatch.setattr(robust, "nnm", lambda x, f, weights=None: (x, weights))
    table = _table([("median", False), ("median", True)])
    assert protocol.verdict(C.nnm_gain(table, "median")) != protocol.HOLDS


def test_a_robust_rule_survives_what_breaks_the_mean():
    table = _table([("mean", False), ("trimmed_mean", False)])
    worst = C.worst_over_attacks(table)
    assert (worst.loc["trimmed_mean"] > worst.loc["mean"] + 0.1).all()


def test_adversary_names_and_bad_values():
    algorithm = C.defence("krum", 2)
    assert C.adversary("none", 2, algorithm) is None and C.adversary("sign flipping", 0, algorithm) is None
    assert C.adversary("ALIE (line search)", 2, algorithm).attack.rule == algorithm.aggregator
    assert C.adversary("label flipping", 2, algorithm).attack.poisons_data
    with pytest.raises(ValueError, match="attack must be one of"):
        C.adversary("bitflip", 2, algorithm)
    with pytest.raises(ValueError, match=r"f must be an integer in \[0, n_clients / 2\)"):
        C.run({"f": 10, "n_clients": 20}, progress=False)
