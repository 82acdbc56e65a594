"""Chapter 32 on the protocol: error feedback is what carries top-k at 1%, and ignoring its memory loses the claim."""
import pytest
import torch

from flbook import protocol
from flbook.channel import CompressedChannel
from flbook.chapters import ch32_communication_budget as chapter
from flbook.history import seed_budget_table

TINY = dict(names=("FedAvg", "FedAvg + top-k(0.01)", "FedAvg + top-k(0.01) + EF"), rounds=10, tune_rounds=2,
            lrs=(0.4,), task={"n_clients": 5, "model": "logistic"})


@pytest.mark.parametrize("broken", [False, True])
def test_the_memory_claim_holds_and_fails_once_the_memory_is_ignored(broken, digits_data, monkeypatch):
    """The chapter's "the memory is what recovers it" holds on 3 seeds through its own protocol run, and does not
    once every client's residual is read as zero (top-k with EF is then top-k without)."""
    if broken:
        monkeypatch.setattr(CompressedChannel, "_residual", lambda self, key, v, clients: torch.zeros_like(v))
    protocol.clear_cache()  # the broken channel has the same description as the working one
    result, table = chapter.accuracy_costs(digits_data, **TINY)
    verdicts = table.set_index("claim")["verdict"]
    assert (verdicts["the memory is what recovers it"] == protocol.HOLDS) != broken
    assert verdicts["top-k(0.01) without memory costs accuracy"] == protocol.HOLDS
    assert set(result.history.seed) == set(protocol.SEEDS) and len(verdicts) == 3  # claims on absent uplinks left out
    saved = seed_budget_table(result.history)["x fewer bytes up"]
    assert saved["FedAvg"] == 1 and (saved.drop("FedAvg") > 50).all()
