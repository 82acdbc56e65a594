import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from flbook import attacks as A
from flbook import robust as R

GOLDEN = np.load(Path(__file__).parent / "fixtures" / "byzfl_golden.npz")


def case(name):
    return (torch.from_numpy(GOLDEN[f"{name}/x"]), torch.from_numpy(GOLDEN[f"{name}/out"]).float(),
            json.loads(str(GOLDEN[f"{name}/params"])))


def names(prefix):
    return sorted({k.rsplit("/", 1)[0] for k in GOLDEN.files if k.startswith(prefix)})


def assert_close(a, b):
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def honest_stack(seed=0, h=9, p=6):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(p, generator=g) + 0.5 * torch.randn(h, p, generator=g)


def test_sign_flipping_matches_byzfl_and_is_minus_the_honest_mean():
    honest, out, _ = case("attack/sign_flipping")
    b = A.sign_flipping(honest, 3)
    assert b.shape == (3, honest.shape[1])
    assert_close(b[1], out)
    assert torch.equal(b[0], -honest.mean(0))


@pytest.mark.parametrize("name", names("attack/ipm"))
def test_fall_of_empires_matches_byzfl_ipm(name):
    honest, out, params = case(name)
    assert_close(A.fall_of_empires(honest, 2, z=params["z"])[0], out)


@pytest.mark.parametrize("name", names("attack/alie"))
def test_alie_matches_byzfl(name):
    honest, out, params = case(name)
    assert_close(A.a_little_is_enough(honest, 2, z=params["z"])[0], out)


def test_mimic_inf_and_gaussian_match_byzfl():
    honest, out, params = case("attack/mimic")
    assert torch.equal(A.mimic(honest, 2, target=params["target"]), honest[params["target"]].expand(2, -1))
    assert_close(A.mimic(honest, 1, target=params["target"])[0], out)
    honest, out, _ = case("attack/inf")
    assert torch.equal(A.inf(honest, 2)[0], out)
    honest, out, params = case("attack/gaussian")  # ByzFL draws torch.randn(P) from a seeded global generator
    g = torch.Generator().manual_seed(params["seed"])
    assert_close(A.gaussian(honest, 1, mu=params["mu"], sigma=params["sigma"], generator=g)[0], out)


def line_search_rule(params):
    pre = tuple(params["pre"])
    return R.RobustRule(params["rule"], f=params["f"], pre=pre,
                        options={"convention": "byzfl"} if params["rule"] == "multi_krum" else {})


@pytest.mark.parametrize("name", names("search/"))
def test_line_search_objective_matches_byzfl_at_every_scale(name):
    honest, out, params = case(name)
    vector = A.SEARCHED[name.split("/")[1].split("_")[0]]
    scales = torch.tensor(params["scales"])
    objective = A.line_search_objective(honest, params["f"], vector, line_search_rule(params), scales)
    torch.testing.assert_close(objective, out, rtol=1e-4, atol=1e-5)


def test_card_invariants_foe_alie():
    honest = honest_stack()
    assert torch.equal(A.fall_of_empires(honest, 2, z=1.0), torch.zeros(2, 6))
    assert torch.equal(A.fall_of_empires(honest, 2, z=0.0)[0], honest.mean(0))
    assert torch.equal(A.a_little_is_enough(honest, 2, z=0.0)[0], honest.mean(0))
    assert_close(A.fall_of_empires(honest, 1, z=3.0)[0], -2 * honest.mean(0))


def test_label_flipping_is_an_involution():
    y = torch.randint(0, 10, (200,), generator=torch.Generator().manual_seed(0))
    flipped = A.flip_labels(y, 10)
    assert torch.equal(A.flip_labels(flipped, 10), y)
    assert torch.equal(A.flip_labels(torch.arange(4), 4), torch.tensor([3, 2, 1, 0]))
    assert (flipped != y).float().mean() > 0.8  # C even: no fixed point


def test_scales_broadcast_for_the_batched_search():
    honest, z = honest_stack(), torch.tensor([0.0, 0.5, 2.0])
    assert_close(A.alie_vector(honest, z)[2], A.a_little_is_enough(honest, 1, z=2.0)[0])
    assert_close(A.foe_vector(honest, z)[1], A.fall_of_empires(honest, 1, z=0.5)[0])


def test_line_search_calls_the_rule_once_and_picks_the_worst_scale():
    honest, calls = honest_stack(1, h=10), []
    rule = R.RobustRule("trimmed_mean", f=2)

    def counted(x):
        calls.append(x.shape)
        return rule(x)

    scales = A.SCALES
    b, best = A.line_searched(honest, 2, A.alie_vector, counted, scales)
    assert calls == [(len(scales), 12, 6)]  # one call over all candidates
    objective = torch.stack([(rule(torch.cat([honest, A.a_little_is_enough(honest, 2, z=s)])) - honest.mean(0)).norm()
                             for s in scales])
    assert best == scales[int(objective.argmax())]
    assert_close(b, A.a_little_is_enough(honest, 2, z=best))
    assert best > 0


def test_line_searched_foe_hurts_the_mean_more_than_a_fixed_scale():
    honest = honest_stack(2, h=8)
    b, best = A.line_searched(honest, 4, A.foe_vector, R.mean)
    fixed = A.fall_of_empires(honest, 4, z=1.1)
    hurt = lambda byz: (R.mean(torch.cat([honest, byz])) - honest.mean(0)).norm()  # noqa: E731
    assert best == max(A.SCALES) and hurt(b) > hurt(fixed)


def test_attack_object_and_adversary():
    honest = honest_stack(3)
    assert torch.equal(A.Attack("alie", {"z": 1.0})(honest, 2), A.a_little_is_enough(honest, 2, z=1.0))
    searched = A.Attack("foe", rule=R.RobustRule("median"))
    assert torch.equal(searched(honest, 3), A.line_searched(honest, 3, A.foe_vector, R.RobustRule("median"))[0])
    assert str(A.Attack("alie", {"z": 1.0})) == "alie(z=1.0)"
    adv = A.Adversary(A.Attack("gaussian"), f=0.25, seed=4)
    ids = adv.clients(20)
    assert ids.tolist() == sorted(set(ids.tolist())) and len(ids) == 5 and ids.max() < 20
    assert torch.equal(ids, A.Adversary(A.Attack("gaussian"), f=5, seed=4).clients(20))
    assert not torch.equal(ids, A.Adversary(f=5, seed=5).clients(20))
    assert adv(honest, 5).shape == (5, 6)
    assert torch.equal(adv(honest, 5), adv(honest, 5))  # same seed, same noise
    g = torch.Generator().manual_seed(9)
    assert not torch.equal(adv(honest, 5, g), adv(honest, 5))


@pytest.mark.parametrize("call, match", [
    (lambda: A.sign_flipping(torch.zeros(0, 3), 1), r"shape \(H, P\) with H >= 1"),
    (lambda: A.sign_flipping(torch.tensor([[float("nan")]]), 1), r"NaN"),
    (lambda: A.sign_flipping(torch.ones(2, 3), -1), r"f .* must be an integer >= 0, got -1"),
    (lambda: A.mimic(torch.ones(2, 3), 1, target=2), r"target must be an integer in \[0, 1\], got 2"),
    (lambda: A.gaussian(torch.ones(2, 3), 1, sigma=-1.0), r"sigma must be >= 0"),
    (lambda: A.flip_labels(torch.tensor([0, 5]), 5), r"labels must lie in \[0, 4\]"),
    (lambda: A.flip_labels(torch.tensor([0]), 1), r"n_classes must be an integer >= 2"),
    (lambda: A.line_searched(torch.ones(3, 2), 1, A.alie_vector, R.mean, ()), r"scales must be a non-empty"),
    (lambda: A.Attack("byzantine"), r"attack must be one of"),
    (lambda: A.Attack("sign_flipping", rule=R.mean), r"line search .* needs an attack in"),
    (lambda: A.Adversary(f=1.5), r"fraction in \[0, 1\), got 1.5"),
    (lambda: A.Adversary(f=30).clients(20), r"at most n_clients=20"),
])
def test_bad_input_is_rejected(call, match):
    with pytest.raises(ValueError, match=match):
        call()


@pytest.mark.skipif(importlib.util.find_spec("byzfl") is None, reason="byzfl is not installed (optional cross-check)")
def test_cross_check_against_installed_byzfl():
    import byzfl
    honest = honest_stack(5, h=11, p=15)
    assert_close(A.sign_flipping(honest, 1)[0], byzfl.SignFlipping()(honest))
    assert_close(A.fall_of_empires(honest, 1, z=2.5)[0], byzfl.InnerProductManipulation(tau=1.5)(honest))
    assert_close(A.a_little_is_enough(honest, 1, z=0.7)[0], byzfl.ALittleIsEnough(tau=0.7)(honest))
    search = byzfl.Optimal_ALittleIsEnough(agg=byzfl.TrMean(f=3), pre_agg_list=[], f=3)
    rule = R.RobustRule("trimmed_mean", f=3)
    ours = A.line_search_objective(honest, 3, A.alie_vector, rule, torch.tensor([0.3, 2.0]))
    theirs = torch.tensor([search._evaluate(honest, honest.mean(0), t) for t in (0.3, 2.0)])
    torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-5)
