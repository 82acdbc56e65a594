import math
import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from flbook import robust as R

GOLDEN = np.load(Path(__file__).parent / "fixtures" / "byzfl_golden.npz")


def golden(prefix):
    """(name, x, out, params) for every fixture case whose name starts with prefix."""
    names = sorted({k.rsplit("/", 1)[0] for k in GOLDEN.files if k.startswith(prefix + "/")})
    assert names, prefix
    return [pytest.param(torch.from_numpy(GOLDEN[f"{n}/x"]), torch.from_numpy(GOLDEN[f"{n}/out"]).float(),
                         json.loads(str(GOLDEN[f"{n}/params"])), id=n) for n in names]


def stack(seed, m=10, p=8, outliers=0, scale=8.0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(p, generator=g) + 0.5 * torch.randn(m, p, generator=g)
    x[:outliers] += scale * torch.randn(outliers, p, generator=g)
    return x


def assert_close(a, b):
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("x, out, params", golden("mean"))
def test_mean_matches_byzfl(x, out, params):
    assert_close(R.mean(x), out)


@pytest.mark.parametrize("x, out, params", golden("median"))
def test_median_matches_byzfl(x, out, params):
    assert_close(R.coordinate_median(x), out)


@pytest.mark.parametrize("x, out, params", golden("trimmed_mean"))
def test_trimmed_mean_matches_byzfl(x, out, params):
    assert_close(R.trimmed_mean(x, params["f"]), out)


@pytest.mark.parametrize("x, out, params", golden("krum"))
def test_krum_matches_byzfl(x, out, params):
    assert_close(R.krum(x, params["f"], convention="byzfl"), out)


@pytest.mark.parametrize("x, out, params", golden("multi_krum"))
def test_multi_krum_matches_byzfl(x, out, params):
    assert_close(R.multi_krum(x, params["f"], convention="byzfl"), out)


@pytest.mark.parametrize("x, out, params", golden("geometric_median") + golden("geometric_median_long"))
def test_geometric_median_matches_byzfl(x, out, params):
    # ByzFL starts Weiszfeld at zero and runs a fixed number of steps: init=0, tol=0 reproduces it
    z = R.geometric_median(x, nu=params["nu"], max_iter=params["max_iter"], tol=0, init=torch.zeros(x.shape[1]))
    assert_close(z, out)


@pytest.mark.parametrize("x, out, params", golden("centered_clipping"))
def test_centered_clipping_matches_byzfl(x, out, params):
    assert_close(R.centered_clipping(x, tau=params["tau"], iters=params["iters"]), out)


@pytest.mark.parametrize("x, out, params", golden("nnm"))
def test_nnm_matches_byzfl(x, out, params):
    mixed, weights = R.nnm(x, params["f"])
    assert_close(mixed, out)
    assert weights is None


@pytest.mark.parametrize("x, out, params", golden("nna"))
def test_nna_matches_byzfl_monna(x, out, params):
    assert_close(R.nearest_neighbour_average(x, params["f"], x[params["pivot"]][None]).squeeze(0), out)


@pytest.mark.parametrize("x, out, params", golden("bucketing"))
def test_bucketing_matches_byzfl_with_the_same_permutation(x, out, params):
    g = torch.Generator().manual_seed(params["seed"])
    buckets, _ = R.bucketing(x, params["bucket_size"], generator=g)
    assert_close(buckets, out)


def test_median_of_an_even_count_both_readings():
    x = torch.tensor([[1.0], [4.0], [2.0], [10.0]])
    assert R.coordinate_median(x).item() == 3.0  # midpoint of 2 and 4 (numpy, ByzFL)
    assert R.coordinate_median(x, even="lower").item() == 2.0  # torch.median
    assert torch.equal(R.coordinate_median(x, even="lower"), x.median(0).values)
    odd = x[:3]
    assert R.coordinate_median(odd).item() == R.coordinate_median(odd, even="lower").item() == 2.0


def test_krum_conventions_agree_when_they_count_the_same_neighbours():
    for seed in range(5):
        x = stack(seed, m=12, outliers=3)
        for f in (0, 1, 2, 3):  # paper: M - f - 2 neighbours; byzfl with f + 1: M - (f + 1) - 1, the same count
            paper, byz = R.krum_scores(x, f, "paper"), R.krum_scores(x, f + 1, "byzfl")
            assert_close(paper, byz * (12 - f - 2))  # sum = count * mean
            assert torch.equal(R.krum(x, f, "paper"), R.krum(x, f + 1, "byzfl"))


def test_krum_conventions_can_differ():
    # two tight clusters of 3, one farther point: with M=7, f=2 the paper counts 3 neighbours, ByzFL 4
    x = torch.tensor([[0.0], [0.1], [0.2], [5.0], [5.1], [5.25], [2.6]])
    scores_paper, scores_byzfl = R.krum_scores(x, 2, "paper"), R.krum_scores(x, 2, "byzfl")
    assert not torch.allclose(scores_paper / 3, scores_byzfl)


def test_krum_picks_an_honest_message_and_rejects_outliers():
    x = stack(0, m=10, outliers=2, scale=50.0)
    assert torch.equal(R.krum(x, 2), x[R.krum_scores(x, 2).argmin()])
    assert R.krum_scores(x, 2).argmin() >= 2
    assert (R.multi_krum(x, 2, m=3) - x[2:].mean(0)).norm() < (x.mean(0) - x[2:].mean(0)).norm()


RULES = [("mean", {}), ("median", {}), ("trimmed_mean", {"f": 2}), ("geometric_median", {}), ("krum", {"f": 2}),
         ("multi_krum", {"f": 2}), ("centered_clipping", {"tau": 0.5, "iters": 3})]


@pytest.mark.parametrize("rule, kwargs", RULES, ids=[r for r, _ in RULES])
def test_every_rule_is_permutation_invariant(rule, kwargs):
    x = stack(1, m=11, outliers=2)
    perm = torch.randperm(11, generator=torch.Generator().manual_seed(0))
    assert_close(R.RULES[rule](x[perm], **kwargs), R.RULES[rule](x, **kwargs))


@pytest.mark.parametrize("rule, kwargs", RULES, ids=[r for r, _ in RULES])
def test_every_rule_broadcasts_over_leading_dimensions(rule, kwargs):
    xs = torch.stack([stack(s, m=9, outliers=1) for s in range(4)])  # (4, 9, 8)
    batched = R.RULES[rule](xs, **kwargs)
    assert_close(batched, torch.stack([R.RULES[rule](x, **kwargs) for x in xs]))


@pytest.mark.parametrize("rule, kwargs", RULES, ids=[r for r, _ in RULES])
def test_every_rule_returns_v_when_all_messages_are_v(rule, kwargs):
    v = torch.randn(8)
    extra = {"center": v} if rule == "centered_clipping" else {}  # from center v, clipping moves nothing
    assert_close(R.RULES[rule](v.expand(9, 8).clone(), **kwargs, **extra), v)


def test_nnm_and_nna_with_f_zero_give_the_exact_mean():
    x = stack(2, m=7)
    assert_close(R.nearest_neighbour_average(x, 0, x[:3]), x.mean(0).expand(3, -1))
    assert_close(R.nnm(x, 0)[0], x.mean(0).expand(7, -1))


def test_nnm_keeps_inf_messages_out_of_the_honest_rows():
    """An inf message is far from every honest one: NNM leaves it out of their neighbourhoods (no 0 * inf = NaN)."""
    honest = torch.randn(6, 4)
    x = torch.cat([honest, torch.full((2, 4), math.inf)])
    mixed, _ = R.nnm(x, 2)
    assert torch.isfinite(mixed[:6]).all()
    assert_close(mixed[:6], torch.stack([honest[(honest - h).norm(dim=1).topk(6, largest=False).indices].mean(0)
                                         for h in honest]))
    assert torch.isfinite(R.RobustRule("median", f=2, pre=("nnm",))(x)).all()


def test_nna_returns_v_when_the_kept_messages_are_copies_of_v():
    v = torch.randn(8)
    x = torch.cat([v.expand(6, 8), v + 10 * torch.randn(2, 8)])  # n - 2f = 6 copies of v, f = 2 far messages
    x = x[torch.randperm(8, generator=torch.Generator().manual_seed(1))]
    torch.testing.assert_close(R.nearest_neighbour_average(x, 2, v[None])[0], v, rtol=1e-6, atol=1e-7)


def test_weighted_mean_is_fedavg_and_bucketing_keeps_it():
    x, w = stack(3, m=6), torch.tensor([0.05, 0.3, 0.1, 0.25, 0.2, 0.1])
    assert torch.equal(R.mean(x, w), w @ x)
    assert torch.equal(R.RobustRule("mean")(x, w), w @ x)
    buckets, bw = R.bucketing(x, 4, w, generator=torch.Generator().manual_seed(0))
    assert buckets.shape == (2, 8) and torch.allclose(bw.sum(), torch.tensor(1.0))
    assert_close(R.mean(buckets, bw), w @ x)


def test_weighted_geometric_median_and_clipping_follow_the_weights():
    x = stack(4, m=5)
    heavy = torch.tensor([0.96, 0.01, 0.01, 0.01, 0.01])
    assert (R.geometric_median(x, heavy) - x[0]).norm() < 1e-3
    assert_close(R.centered_clipping(x, heavy, tau=1e6), heavy @ x)  # no clipping: the weighted mean


def test_geometric_median_converges_to_a_stationary_point_and_resists_outliers():
    x = stack(5, m=11, outliers=3, scale=100.0)
    z = R.geometric_median(x, max_iter=1000, tol=1e-9)
    u = (z - x) / (z - x).norm(dim=-1, keepdim=True)
    assert u.sum(0).norm() < 1e-2  # the gradient of sum_i ||z - x_i|| vanishes
    assert (z - x[3:].mean(0)).norm() < (x.mean(0) - x[3:].mean(0)).norm() / 10


def test_rules_ignore_inf_messages_where_they_can():
    x = stack(6, m=9)
    x[:2] = float("inf")
    for rule, kwargs in [("median", {}), ("trimmed_mean", {"f": 2}), ("krum", {"f": 2}), ("geometric_median", {}),
                         ("centered_clipping", {"tau": 0.5})]:
        assert torch.isfinite(R.RULES[rule](x, **kwargs)).all(), rule
    assert torch.isinf(R.mean(x)).all()


def test_robust_rule_composes_pre_aggregators():
    x = stack(7, m=12, outliers=2)
    g = lambda: torch.Generator().manual_seed(3)  # noqa: E731
    rule = R.RobustRule("krum", f=1, pre=("nnm", "bucketing"), bucket_size=2)
    buckets, _ = R.bucketing(R.nnm(x, 1)[0], 2, generator=g())
    assert torch.equal(rule(x, generator=g()), R.krum(buckets, 1))
    assert str(rule) == "nnm -> bucketing -> krum (f=1)"
    cc = R.RobustRule("centered_clipping", options={"tau": 0.1})
    assert_close(cc(x, center=x[5]), R.centered_clipping(x, tau=0.1, center=x[5]))


@pytest.mark.parametrize("call, match", [
    (lambda: R.krum(torch.randn(6, 3), 2),
     r"krum: f must be an integer in \[0, 1\] for M=6 messages \(M > 2f \+ 2\), got 2"),
    (lambda: R.trimmed_mean(torch.randn(6, 3), 3), r"trimmed_mean: f must be an integer in \[0, 2\] .* got 3"),
    (lambda: R.trimmed_mean(torch.randn(6, 3), -1), r"got -1"),
    (lambda: R.multi_krum(torch.randn(9, 3), 1, m=10), r"m must be an integer in \[1, 9\]"),
    (lambda: R.nnm(torch.randn(4, 3), 4), r"f must be an integer in \[0, 3\]"),
    (lambda: R.mean(torch.zeros(0, 3)), r"M >= 1 messages, got shape \(0, 3\)"),
    (lambda: R.mean(torch.zeros(3)), r"shape \(\.\.\., M, P\)"),
    (lambda: R.coordinate_median(torch.tensor([[0.0], [float("nan")]])), r"NaN"),
    (lambda: R.mean(torch.ones(3, 2), torch.tensor([0.5, 0.5, 0.5])), r"sum to 1"),
    (lambda: R.mean(torch.ones(3, 2), torch.tensor([0.5, 0.5])), r"weights must have shape \(3,\)"),
    (lambda: R.geometric_median(torch.ones(3, 2), nu=0.0), r"nu > 0"),
    (lambda: R.centered_clipping(torch.ones(3, 2), tau=-1.0), r"tau > 0"),
    (lambda: R.bucketing(torch.ones(3, 2), 0), r"bucket_size must be an integer >= 1"),
    (lambda: R.coordinate_median(torch.ones(3, 2), even="upper"), r"even must be"),
    (lambda: R.krum_scores(torch.ones(9, 2), 1, convention="flower"), r"convention"),
    (lambda: R.RobustRule("bulyan"), r"rule must be one of"),
    (lambda: R.RobustRule("mean", pre=("nnm", "clip")), r"pre must be a tuple"),
    (lambda: R.RobustRule("mean", pre="nnm"), r"pre must be a tuple"),
    (lambda: R.RobustRule("krum", f=-2), r"f must be an integer >= 0, got -2"),
])
def test_bad_input_is_rejected_with_the_parameter_and_range(call, match):
    with pytest.raises(ValueError, match=match):
        call()


@pytest.mark.skipif(importlib.util.find_spec("byzfl") is None, reason="byzfl is not installed (optional cross-check)")
def test_cross_check_against_installed_byzfl():
    import byzfl
    for seed in range(3):
        x = stack(seed, m=13, p=20, outliers=3)
        assert_close(R.coordinate_median(x), byzfl.Median()(x))
        assert_close(R.trimmed_mean(x, 3), byzfl.TrMean(f=3)(x))
        assert_close(R.krum(x, 3, "byzfl"), byzfl.Krum(f=3)(x))
        assert_close(R.multi_krum(x, 3, convention="byzfl"), byzfl.MultiKrum(f=3)(x))
        assert_close(R.nnm(x, 3)[0], byzfl.NNM(f=3)(x))
        assert_close(R.centered_clipping(x, tau=1.0, iters=2), byzfl.CenteredClipping(L=2, tau=1.0)(x))
        assert_close(R.geometric_median(x, nu=0.1, max_iter=5, tol=0, init=torch.zeros(20)),
              byzfl.GeometricMedian(nu=0.1, T=5)(x))


@pytest.mark.parametrize("seed", range(6))
def test_order_statistics_agree_with_a_full_sort_with_ties_and_infs(seed):
    g = torch.Generator().manual_seed(seed)
    m = 8 + seed
    x = torch.randint(-3, 4, (m, 50), generator=g).float()  # many ties
    x[: seed % 3] = float("inf") if seed % 2 else -float("inf")
    s = x.sort(0).values
    for f in range(0, (m - 1) // 2 + 1):
        kept = s[f:m - f]
        expected = torch.where(kept[0] == kept[-1], kept[0], kept.sum(0) / (m - 2 * f))
        assert_close(R.trimmed_mean(x, f), expected)
    expected = s[(m - 1) // 2] if m % 2 else (s[m // 2 - 1] + s[m // 2]) / 2
    assert_close(R.coordinate_median(x), expected)
