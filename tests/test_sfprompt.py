"""SFPrompt: the card's invariants (pruning, EL2N range, SFL reduction, frozen backbone, FedAvg of prompts and tail)."""
import math

import numpy as np
import pandas as pd
import pytest
import torch

from flbook.algorithms import PartialFedAvg, SFPrompt
from flbook.algorithms.base import Batches, RoundInfo
from flbook.algorithms.sfprompt import el2n, n_kept
from flbook.federation import Federation
from flbook.split import SplitModel, Trainable
from flbook.transformer import vit


@pytest.fixture(scope="module")
def task(digits_data):
    data = digits_data
    sizes = np.array([40, 60, 90, 130])  # unequal clients
    ids = np.random.default_rng(0).permutation(len(data.y_train))[: sizes.sum()]
    return data, np.split(ids, np.cumsum(sizes)[:-1])


def _trainable(prompts=4, parts=("prompts", "tail"), head_blocks=1):
    model = vit((1, 8, 8), 10, depth=3, dim=16, mlp=32, prompts=prompts)
    return model, Trainable(SplitModel(model, head_blocks, 0), parts, model.init(0))


def test_el2n_scores_lie_in_zero_to_sqrt_two():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(200, 5, generator=g) * 10
    scores = el2n(logits, torch.randint(0, 5, (200,), generator=g))
    assert scores.min() >= 0 and scores.max() <= math.sqrt(2) + 1e-6
    assert torch.allclose(el2n(torch.tensor([[50.0, 0.0]]), torch.tensor([1])), torch.tensor([math.sqrt(2)]), atol=1e-5)


def test_pruning_keeps_the_hardest_ceil_gamma_n_and_gamma_one_is_a_no_op():
    model, trainable = _trainable()
    g = torch.Generator().manual_seed(1)
    batches = Batches(torch.rand(3, 8, 1, 8, 8, generator=g), torch.randint(0, 10, (3, 8), generator=g))
    w = model.init(0)[trainable.index]
    scores = el2n(trainable.local(w, batches.x.reshape(24, 1, 8, 8)), batches.y.reshape(24))
    pruned, kept = SFPrompt(trainable=trainable, keep=0.3).prune(w, batches)
    assert int(kept.sum()) == n_kept(24, 0.3) == 8 and kept.view(-1)[:8].all()  # kept samples first
    hardest = set(torch.argsort(scores, descending=True)[:8].tolist())
    flat = batches.x.reshape(24, -1)
    picked = {int((flat == row).all(1).nonzero()[0]) for row in pruned.x.reshape(24, -1)[:8]}
    assert picked == hardest
    same, all_kept = SFPrompt(trainable=trainable, keep=1.0).prune(w, batches)
    assert torch.equal(same.x, batches.x) and torch.equal(same.y, batches.y) and all_kept.all()
    assert n_kept(70, 0.3) == 21 and n_kept(torch.tensor(70), 0.3) == 21


def test_no_prompts_no_local_loss_is_split_training_of_the_tail_which_equals_linear_probing(task):
    data, parts = task
    model, tail = _trainable(prompts=0, parts=("tail",))
    fed = Federation(data, parts, model, local_steps=3, batch_size=16, lr=0.1)
    sfl = fed.run(SFPrompt(trainable=tail, keep=1.0, local_loss=False), 2, progress=False, label="SFL")
    probe = fed.run(PartialFedAvg(trainable=tail), 2, progress=False, label="probe")
    assert torch.allclose(fed.final_models["SFL"], fed.final_models["probe"], atol=1e-5)
    assert np.allclose(sfl.test_acc, probe.test_acc)
    assert sfl.bytes_up.iloc[-1] == sfl.bytes_down.iloc[-1] == 2 * len(parts) * len(tail.index) * 4  # only the tail


@pytest.mark.parametrize("keep, local_loss", [(0.5, True), (1.0, False)])
def test_frozen_backbone_never_changes_and_executors_agree(task, keep, local_loss):
    data, parts = task
    model, trainable = _trainable()
    x0 = model.init(0)
    finals = []
    for executor in ("loop", "batched"):
        fed = Federation(data, parts, model, local_epochs=1.0, batch_size=16, lr=0.1, executor=executor)
        fed.run(SFPrompt(trainable=trainable, keep=keep, local_loss=local_loss), 2, progress=False, label="s")
        finals.append(fed.final_models["s"])
    frozen = torch.ones(model.n_params, dtype=torch.bool)
    frozen[trainable.index] = False
    assert torch.equal(finals[0][frozen], x0[frozen]) and not torch.equal(finals[0][~frozen], x0[~frozen])
    assert torch.allclose(finals[0], finals[1], atol=1e-5)


def test_fedavg_of_identical_clients_returns_their_values():
    model, trainable = _trainable()
    algo = SFPrompt(trainable=trainable)
    x = model.init(0)
    delta = torch.randn(len(trainable.index))
    info = RoundInfo(1, torch.arange(3), 3, torch.tensor([5, 7, 11]))
    new, _ = algo.aggregate(x, {}, {"delta": delta.expand(3, -1)}, torch.tensor([0.2, 0.3, 0.5]), info)
    assert torch.allclose(new[trainable.index], x[trainable.index] + delta)
    assert torch.equal(algo.downlink(new, {})["w"], new[trainable.index])


def test_keep_ratio_is_checked():
    _, trainable = _trainable()
    with pytest.raises(ValueError, match="keep"):
        SFPrompt(trainable=trainable, keep=0.0)
    with pytest.raises(ValueError, match="keep"):
        SFPrompt(trainable=trainable, keep=1.5)


def test_breaking_pruning_or_the_local_loss_phase_changes_the_chapters_counts():
    """The chapter's claim that holds: pruning cuts the split traffic to gamma of SFL's. Without pruning it fails;
    without the local-loss phase the client's compute drops by that phase's full head-and-tail passes."""
    from flbook.chapters import ch60_sfprompt as chapter
    values = {**chapter.DEFAULTS, "n_clients": 3, "algorithms": ("SFL", "SFPrompt")}

    def ratio(table):
        return table.loc["SFPrompt", "smashed MB per round"] / table.loc["SFL", "smashed MB per round"]
    table = chapter.costs(values)
    assert abs(ratio(table) - values["keep"]) < 0.01
    assert abs(ratio(chapter.costs({**values, "keep": 1.0})) - values["keep"]) > 0.4
    without = chapter.costs({**values, "local_loss": False})
    assert without.loc["SFPrompt", "client GFLOPs per round"] < 0.6 * table.loc["SFPrompt", "client GFLOPs per round"]


def test_stream_yields_after_each_task_and_run_is_its_last():
    from flbook.chapters import ch60_sfprompt as chapter
    values = {"n_clients": 3, "rounds": 2, "algorithms": ("FL linear probe", "SFPrompt"), "prompts": 2, "seeds": 1,
              "tune": False}
    steps = list(chapter.stream(values, progress=False))
    assert [sorted(h["algorithm"].unique()) for h in steps] == [["FL linear probe"], ["FL linear probe", "SFPrompt"]]
    assert steps[0].equals(steps[1].iloc[:len(steps[0])])
    pd.testing.assert_frame_equal(steps[-1].drop(columns="wall_time"),
                                  chapter.run(values, progress=False).drop(columns="wall_time"))
