"""Robust aggregation: small pure rules over the round's stacked messages, and pre-aggregators that precede them.

Every rule maps stacked messages x of shape (..., M, P) to one aggregate (..., P); leading dimensions are batch
dimensions (an attacker's line search evaluates all its candidate scales in one call). Pairwise distances come
from `torch.cdist`, selections from `topk`/`kthvalue`/`sort`, averages of selected rows from one matrix product,
so no rule loops over messages. f is the number of Byzantine messages a rule is asked to tolerate.
Inputs with NaN are rejected; +-inf (the "inf" attack) is allowed: non-finite distances count as infinitely far.

Weights: the mean, the geometric median and centered clipping take per-message weights (M,) summing to 1; the
order statistics, Krum and Multi-Krum treat every message alike, as in their papers (a Byzantine client could
claim any sample size), and take none.
"""
from __future__ import annotations

import math

from dataclasses import dataclass, field
from typing import Callable, Literal

import torch

Tensor = torch.Tensor


def _check_messages(x: Tensor, rule: str) -> int:
    """The number of messages M of a stack (..., M, P); a clear error for an empty stack, a wrong shape or NaN."""
    if not isinstance(x, torch.Tensor) or x.ndim < 2:
        raise ValueError(f"{rule}: messages must be a tensor of shape (..., M, P), got "
                         f"{tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__}")
    if x.shape[-2] == 0:
        raise ValueError(f"{rule}: messages must hold M >= 1 messages, got shape {tuple(x.shape)}")
    if torch.isnan(x.sum()) and torch.isnan(x).any():  # a NaN makes the sum NaN: one cheap pass first
        raise ValueError(f"{rule}: messages contain NaN ({int(torch.isnan(x).any(-1).sum())} of the rows)")
    return x.shape[-2]


def _check_f(f: int, m: int, rule: str, f_max: int, condition: str) -> None:
    """f must be an integer in [0, f_max], the range where `rule` is defined for M = m messages."""
    if isinstance(f, bool) or not isinstance(f, int) or not 0 <= f <= f_max:
        raise ValueError(f"{rule}: f must be an integer in [0, {f_max}] for M={m} messages ({condition}), got {f!r}")


def _check_weights(weights: Tensor | None, m: int, rule: str) -> Tensor | None:
    """Per-message weights (M,), finite, non-negative, summing to 1."""
    if weights is None:
        return None
    if weights.shape != (m,):
        raise ValueError(f"{rule}: weights must have shape ({m},), one per message, got {tuple(weights.shape)}")
    if not torch.isfinite(weights).all() or (weights < 0).any() or abs(float(weights.sum()) - 1) > 1e-4:
        raise ValueError(f"{rule}: weights must be finite, >= 0 and sum to 1, got sum {float(weights.sum()):.6g}")
    return weights


def _rows_average(selection: Tensor, x: Tensor) -> Tensor:
    """Average rows of x with a (..., Q, M) matrix of row weights: one matmul instead of gathering (..., Q, k, P).

    A non-finite entry reaches only the outputs whose weights select its row (a plain matmul would spread
    0 * inf = NaN to every output): +inf and -inf are carried apart, NaN where both meet."""
    finite = torch.isfinite(x)
    if bool(finite.all()):
        return selection @ x  # (..., Q, M) @ (..., M, P) -> (..., Q, P)
    out = selection @ x.masked_fill(~finite, 0)  # (..., Q, P)
    chosen = (selection != 0).to(x.dtype)  # (..., Q, M)
    up, down = (chosen @ (x == math.inf).to(x.dtype)) > 0, (chosen @ (x == -math.inf).to(x.dtype)) > 0
    nan = (chosen @ torch.isnan(x).to(x.dtype)) > 0
    out = out.masked_fill(up, math.inf).masked_fill(down, -math.inf)
    return out.masked_fill(nan | (up & down), math.nan)


def _distances(a: Tensor, b: Tensor) -> Tensor:
    """Euclidean distances (..., Q, M) between rows of a (..., Q, P) and b (..., M, P); NaN from inf rows -> inf."""
    return torch.nan_to_num(torch.cdist(a, b), nan=float("inf"))


def _finite_rows(x: Tensor) -> Tensor:
    return torch.isfinite(x).all(-1)  # (..., M)


def mean(x: Tensor, weights: Tensor | None = None) -> Tensor:
    """Plain or weighted average sum_i p_i x_i: FedAvg's aggregation (McMahan et al. 2017), the non-robust baseline."""
    m = _check_messages(x, "mean")
    weights = _check_weights(weights, m, "mean")
    return x.mean(-2) if weights is None else weights @ x  # (M,) @ (..., M, P) -> (..., P)


def coordinate_median(x: Tensor, even: Literal["mean", "lower"] = "mean") -> Tensor:
    """Coordinate-wise median (Yin et al., ICML 2018, https://arxiv.org/abs/1803.01498, Def. 1).

    For an even count M the median is the midpoint of the two middle values (`even="mean"`, as numpy, ByzFL's
    `torch.quantile(q=0.5)` and the paper); `even="lower"` takes the lower one, as `torch.median` does.
    """
    m = _check_messages(x, "coordinate_median")
    if even not in ("mean", "lower"):
        raise ValueError(f"coordinate_median: even must be 'mean' or 'lower', got {even!r}")
    lower = x.kthvalue((m + 1) // 2, dim=-2).values  # (..., P)
    if m % 2 or even == "lower":
        return lower
    return (lower + _next_order_statistic(x, lower, m // 2)) / 2  # midpoint of the two middle order statistics


def _next_order_statistic(x: Tensor, s_k: Tensor, k: int) -> Tensor:
    """s_(k+1) per coordinate from s_(k): s_(k) again if more than k values are <= it, else the next larger value."""
    below = x <= s_k.unsqueeze(-2)  # (..., M, P)
    return torch.where(below.sum(-2) > k, s_k, x.masked_fill(below, float("inf")).amin(-2))  # (..., P)


def trimmed_mean(x: Tensor, f: int) -> Tensor:
    """Coordinate-wise trimmed mean: drop the f largest and f smallest values per coordinate, average the rest.

    Paper: Yin et al., ICML 2018, https://arxiv.org/abs/1803.01498, Def. 2 (with beta = f/M). Needs M > 2f.
    """
    m = _check_messages(x, "trimmed_mean")
    _check_f(f, m, "trimmed_mean", (m - 1) // 2, "M > 2f")
    return x.sort(dim=-2).values[..., f:m - f, :].mean(-2)  # (..., M - 2f, P) -> (..., P)


def geometric_median(x: Tensor, weights: Tensor | None = None, *, nu: float = 1e-6, max_iter: int = 100,
                     tol: float = 1e-6, init: Tensor | None = None) -> Tensor:
    """Geometric median argmin_z sum_i p_i ||z - x_i|| by the smoothed Weiszfeld iteration.

    Paper: Pillutla, Kakade, Harchaoui, "Robust Aggregation for Federated Learning" (RFA), IEEE TSP 2022,
    https://arxiv.org/abs/1912.13445, Alg. 3: beta_i = p_i / max(nu, ||z - x_i||), z <- sum_i beta_i x_i / sum_i beta_i.
    Starts at the weighted mean (or `init`), stops after `max_iter` steps or when a step moves z by at most
    tol * (1 + ||z||). Non-finite messages get weight 0 (as in ByzFL).
    """
    m = _check_messages(x, "geometric_median")
    weights = _check_weights(weights, m, "geometric_median")
    if not nu > 0 or isinstance(max_iter, bool) or not isinstance(max_iter, int) or max_iter < 0 or not tol >= 0:
        raise ValueError(f"geometric_median: need nu > 0, an integer max_iter >= 0 and tol >= 0, "
                         f"got nu={nu}, max_iter={max_iter}, tol={tol}")
    finite = _finite_rows(x)  # (..., M)
    p = (torch.full((m,), 1 / m, dtype=x.dtype, device=x.device) if weights is None else weights) * finite  # (..., M)
    x = torch.where(finite[..., None], x, 0)  # (..., M, P)
    z = (p.unsqueeze(-2) @ x).squeeze(-2) / p.sum(-1, keepdim=True) if init is None else init.to(x.dtype)  # (..., P)
    for _ in range(max_iter):
        beta = p / (x - z.unsqueeze(-2)).norm(dim=-1).clamp(min=nu)  # (..., M)  Alg. 3, smoothed Weiszfeld weights
        z_next = (beta.unsqueeze(-2) @ x).squeeze(-2) / beta.sum(-1, keepdim=True)  # (..., P)
        converged = ((z_next - z).norm(dim=-1) <= tol * (1 + z_next.norm(dim=-1))).all()
        z = z_next
        if converged:
            break
    return z


def krum_scores(x: Tensor, f: int, convention: Literal["paper", "byzfl"] = "paper") -> Tensor:
    """Krum's score of each message (..., M): its squared distances to its nearest neighbours, summed.

    `convention="paper"` (Blanchard et al. 2017, and Flower): the sum over the M - f - 2 nearest other messages.
    `convention="byzfl"` (ByzFL 0.0.11): the mean over the M - f - 1 nearest. Both need M > 2f + 2 (the paper's
    condition, required here for both). Same neighbour count, same argmin: paper(f) ranks like byzfl(f + 1).
    """
    m = _check_messages(x, "krum")
    _check_f(f, m, "krum", (m - 3) // 2, "M > 2f + 2")
    if convention not in ("paper", "byzfl"):
        raise ValueError(f"krum: convention must be 'paper' or 'byzfl', got {convention!r}")
    d2 = _distances(x, x).square()  # (..., M, M)
    d2.diagonal(dim1=-2, dim2=-1).fill_(float("inf"))  # a message is not its own neighbour
    k = m - f - 2 if convention == "paper" else m - f - 1
    nearest = d2.topk(k, dim=-1, largest=False).values  # (..., M, k)
    return nearest.sum(-1) if convention == "paper" else nearest.mean(-1)  # (..., M)


def krum(x: Tensor, f: int, convention: Literal["paper", "byzfl"] = "paper") -> Tensor:
    """Krum: the message with the lowest score (Blanchard et al., NeurIPS 2017, https://arxiv.org/abs/1703.02757)."""
    best = krum_scores(x, f, convention).argmin(-1)  # (...,)
    return torch.take_along_dim(x, best[..., None, None], dim=-2).squeeze(-2)  # (..., P)


def multi_krum(x: Tensor, f: int, m: int | None = None, convention: Literal["paper", "byzfl"] = "paper") -> Tensor:
    """Multi-Krum: the average of the m messages with the lowest Krum scores (m = M - f by default, as ByzFL).

    Paper: Blanchard et al., NeurIPS 2017, https://arxiv.org/abs/1703.02757, Sec. 4 (Multi-Krum).
    """
    scores = krum_scores(x, f, convention)  # (..., M)
    n = x.shape[-2]
    m = n - f if m is None else m
    if isinstance(m, bool) or not isinstance(m, int) or not 1 <= m <= n:
        raise ValueError(f"multi_krum: m must be an integer in [1, {n}] for M={n} messages, got {m!r}")
    chosen = scores.topk(m, dim=-1, largest=False).indices  # (..., m)
    selection = torch.zeros_like(scores).scatter_(-1, chosen, 1 / m)  # (..., M)
    return _rows_average(selection.unsqueeze(-2), x).squeeze(-2)  # (..., P)


def centered_clipping(x: Tensor, weights: Tensor | None = None, *, tau: float = 1.0, iters: int = 1,
                      center: Tensor | None = None) -> Tensor:
    """Centered clipping: v <- v + sum_i p_i clip_tau(x_i - v), `iters` times, from `center` (zero by default).

    Paper: Karimireddy, He, Jaggi, "Learning from History for Byzantine Robust Optimization", ICML 2021,
    https://arxiv.org/abs/2012.10333, Eq. (CC); clip_tau(u) = u min(1, tau/||u||). The paper starts from the
    previous round's aggregate (RobustFedAvg passes it as `center`). Non-finite messages contribute nothing.
    """
    m = _check_messages(x, "centered_clipping")
    weights = _check_weights(weights, m, "centered_clipping")
    if not tau > 0 or isinstance(iters, bool) or not isinstance(iters, int) or iters < 1:
        raise ValueError(f"centered_clipping: need tau > 0 and an integer iters >= 1, got tau={tau}, iters={iters}")
    p = torch.full((m,), 1 / m, dtype=x.dtype, device=x.device) if weights is None else weights  # (M,)
    v = torch.zeros_like(x[..., 0, :]) if center is None else center.to(x.dtype).expand_as(x[..., 0, :])  # (..., P)
    finite = _finite_rows(x)[..., None]  # (..., M, 1)
    finite = None if finite.all() else finite  # skip the masking pass in the usual all-finite case
    for _ in range(iters):
        diff = x - v.unsqueeze(-2) if finite is None else torch.where(finite, x - v.unsqueeze(-2), 0)  # (..., M, P)
        scale = (tau / diff.norm(dim=-1)).clamp(max=1)  # (..., M)  min(1, tau / ||x_i - v||)
        v = v + ((p * scale).unsqueeze(-2) @ diff).squeeze(-2)  # (..., P)
    return v


def nearest_neighbour_average(x: Tensor, f: int, pivots: Tensor) -> Tensor:
    """NNA: for each pivot, the average of the M - f messages closest to it in l2 (f = 0: the plain mean).

    Paper: Farhadkhani et al., "Robust Collaborative Learning with Linear Gradient Overhead" (MoNNA), ICML 2023,
    https://arxiv.org/abs/2209.10931 (the pivot is the node's own model). x (..., M, P), pivots (..., Q, P).
    """
    m = _check_messages(x, "nearest_neighbour_average")
    _check_f(f, m, "nearest_neighbour_average", m - 1, "M > f")
    d = _distances(pivots, x)  # (..., Q, M)
    nearest = d.topk(m - f, dim=-1, largest=False).indices  # (..., Q, M - f)
    selection = torch.zeros_like(d).scatter_(-1, nearest, 1 / (m - f))  # (..., Q, M)
    return _rows_average(selection, x)  # (..., Q, P)


def nnm(x: Tensor, f: int, weights: Tensor | None = None) -> tuple[Tensor, Tensor | None]:
    """Nearest-neighbour mixing: replace every message by the average of its M - f nearest messages (itself included).

    Paper: Allouah et al., "Fixing by Mixing: A Recipe for Optimal Byzantine ML under Heterogeneity", AISTATS 2023,
    https://arxiv.org/abs/2302.01772, Alg. 1. Row i still stands for client i, so the weights pass through.
    """
    return nearest_neighbour_average(x, f, x), weights  # (..., M, P)


def bucketing(x: Tensor, bucket_size: int, weights: Tensor | None = None,
              generator: torch.Generator | None = None) -> tuple[Tensor, Tensor | None]:
    """Bucketing: shuffle the messages, average them in buckets of `bucket_size` (the last one may be smaller).

    Paper: Karimireddy, He, Jaggi, "Byzantine-Robust Learning on Heterogeneous Datasets via Bucketing", ICLR 2022,
    https://arxiv.org/abs/2006.09365, Alg. 1. Returns ceil(M / s) messages; with weights, each bucket is the
    weighted average of its members and carries their summed weight (so a weighted mean afterwards is unchanged).
    The same permutation (from `generator`, a CPU generator) is used for every leading batch index.
    """
    m = _check_messages(x, "bucketing")
    weights = _check_weights(weights, m, "bucketing")
    if isinstance(bucket_size, bool) or not isinstance(bucket_size, int) or bucket_size < 1:
        raise ValueError(f"bucketing: bucket_size must be an integer >= 1, got {bucket_size!r}")
    perm = torch.randperm(m, generator=generator).to(x.device)  # (M,)  position -> message
    n_buckets = -(-m // bucket_size)
    member = torch.zeros(n_buckets, m, dtype=x.dtype, device=x.device)  # (B, M)
    member[torch.arange(m, device=x.device) // bucket_size, perm] = 1
    if weights is not None:
        member = member * weights  # (B, M)
    totals = member.sum(-1)  # (B,)
    return _rows_average(member / totals[:, None], x), (None if weights is None else totals)  # (..., B, P)


RULES: dict[str, Callable[..., Tensor]] = {
    "mean": mean, "median": coordinate_median, "trimmed_mean": trimmed_mean, "geometric_median": geometric_median,
    "krum": krum, "multi_krum": multi_krum, "centered_clipping": centered_clipping}
PRE_AGGREGATORS = ("nnm", "bucketing")
_TAKES_F = {"trimmed_mean", "krum", "multi_krum"}
_WEIGHTED = {"mean", "geometric_median", "centered_clipping"}


@dataclass(frozen=True)
class RobustRule:
    """A rule from RULES preceded by pre-aggregators, e.g. RobustRule("krum", f=2, pre=("nnm",)).

    f goes to every part that takes it (NNM, trimmed mean, Krum, Multi-Krum); after bucketing the rule still
    guards against f bad buckets (each Byzantine message spoils at most one). `options` are the rule's own
    keywords (e.g. {"tau": 0.5} for centered clipping). Weights reach only the rules that take them.
    """

    rule: str = "mean"
    f: int = 0
    pre: tuple[str, ...] = ()
    bucket_size: int = 2
    options: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.rule not in RULES:
            raise ValueError(f"rule must be one of {sorted(RULES)}, got {self.rule!r}")
        if isinstance(self.pre, str) or any(p not in PRE_AGGREGATORS for p in self.pre):
            raise ValueError(f"pre must be a tuple of names from {PRE_AGGREGATORS}, got {self.pre!r}")
        if isinstance(self.f, bool) or not isinstance(self.f, int) or self.f < 0:
            raise ValueError(f"f must be an integer >= 0, got {self.f!r}")
        if isinstance(self.bucket_size, bool) or not isinstance(self.bucket_size, int) or self.bucket_size < 1:
            raise ValueError(f"bucket_size must be an integer >= 1, got {self.bucket_size!r}")

    def __call__(self, x: Tensor, weights: Tensor | None = None, generator: torch.Generator | None = None,
                 **extra) -> Tensor:
        """Aggregate stacked messages (..., M, P) into (..., P); `extra` keywords go to the rule (e.g. center)."""
        for name in self.pre:
            x, weights = (nnm(x, self.f, weights) if name == "nnm"
                          else bucketing(x, self.bucket_size, weights, generator))
        kwargs = {**self.options, **extra}
        if self.rule in _TAKES_F:
            kwargs["f"] = self.f
        if self.rule in _WEIGHTED:
            kwargs["weights"] = weights
        return RULES[self.rule](x, **kwargs)

    def __str__(self) -> str:
        parts = [*self.pre, self.rule]
        return " -> ".join(parts) + (f" (f={self.f})" if self.f else "")
