"""Byzantine attacks: the messages f Byzantine clients send, computed from the round's honest messages.

Model poisoning maps the honest messages (H, P) to f Byzantine messages (f, P); every deterministic attack
sends the same vector from all f clients (as ByzFL and the MoNNA code do). The line-searched variants pick
the attack's scale against the aggregation rule in use, evaluating every candidate scale in one batched call
of the rule over a (S, H + f, P) stack. Data poisoning by label flipping happens at the client: `flip_labels`.
An `Adversary` says which clients are Byzantine (by seed) and which `Attack` they run.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch

Tensor = torch.Tensor
Rule = Callable[[Tensor], Tensor]  # stacked messages (..., M, P) -> aggregate (..., P)

# 16 candidate scales, the MoNNA code's evaluation budget; a grid rather than a sequential search, so one call
SCALES = (0.0, 0.1, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0, 8.0, 12.0, 16.0, 24.0, 32.0)


def _check_honest(honest: Tensor, attack: str) -> None:
    if not isinstance(honest, torch.Tensor) or honest.ndim != 2 or honest.shape[0] == 0:
        raise ValueError(f"{attack}: honest messages must be a tensor of shape (H, P) with H >= 1, got "
                         f"{tuple(honest.shape) if isinstance(honest, torch.Tensor) else type(honest).__name__}")
    if torch.isnan(honest.sum()) and torch.isnan(honest).any():  # a NaN makes the sum NaN: one cheap pass first
        raise ValueError(f"{attack}: honest messages contain NaN")


def _check(honest: Tensor, f: int, attack: str) -> None:
    """Honest messages (H, P) without NaN, and a count f >= 0 of Byzantine messages to craft."""
    _check_honest(honest, attack)
    if isinstance(f, bool) or not isinstance(f, int) or f < 0:
        raise ValueError(f"{attack}: f (Byzantine messages to craft) must be an integer >= 0, got {f!r}")


def _repeat(b: Tensor, f: int) -> Tensor:
    return b.expand(f, -1)  # (P,) -> (f, P): every Byzantine client sends the same vector


def sign_flipping(honest: Tensor, f: int) -> Tensor:
    """Sign flipping: b = -mean_h (Allen-Zhu et al., ICLR 2021, https://arxiv.org/abs/2012.14368)."""
    _check(honest, f, "sign_flipping")
    return _repeat(-honest.mean(0), f)  # (f, P)


def foe_vector(honest: Tensor, z: float | Tensor) -> Tensor:
    """Fall of empires / inner-product manipulation: b = (1 - z) mean_h; z (S,) gives (S, P).

    Paper: Xie, Koyejo, Gupta, "Fall of Empires: Breaking Byzantine-tolerant SGD by Inner Product Manipulation",
    UAI 2019, https://arxiv.org/abs/1903.03936 (b = -eps mean_h, eps = z - 1; the MoNNA code's `empire` uses z).
    z = 0 is no attack, z = 1 sends zero, z > 1 points against the honest mean (ByzFL's IPM tau = z - 1).
    """
    z = torch.as_tensor(z, dtype=honest.dtype, device=honest.device)
    return (1 - z[..., None]) * honest.mean(0)  # (..., P)


def alie_vector(honest: Tensor, z: float | Tensor) -> Tensor:
    """A little is enough: b = mean_h + z std_h, coordinate-wise (unbiased std); z (S,) gives (S, P).

    Paper: Baruch, Baruch, Goldberg, "A Little Is Enough: Circumventing Defenses For Distributed Learning",
    NeurIPS 2019, https://arxiv.org/abs/1902.06156 (the MoNNA code's `little`, ByzFL's ALittleIsEnough(tau=z)).
    """
    z = torch.as_tensor(z, dtype=honest.dtype, device=honest.device)
    std = honest.std(0) if honest.shape[0] > 1 else torch.zeros_like(honest[0])  # (P,)  one message: no spread
    return honest.mean(0) + z[..., None] * std  # (..., P)


def fall_of_empires(honest: Tensor, f: int, z: float = 1.1) -> Tensor:
    """FOE / IPM with a fixed scale z (see `foe_vector`): (f, P)."""
    _check(honest, f, "fall_of_empires")
    return _repeat(foe_vector(honest, z), f)


def a_little_is_enough(honest: Tensor, f: int, z: float = 1.5) -> Tensor:
    """ALIE with a fixed scale z (see `alie_vector`): (f, P)."""
    _check(honest, f, "a_little_is_enough")
    return _repeat(alie_vector(honest, z), f)


def mimic(honest: Tensor, f: int, target: int = 0) -> Tensor:
    """Mimic: every Byzantine client copies honest client `target`, over-weighting its data.

    Paper: Karimireddy, He, Jaggi, "Byzantine-Robust Learning on Heterogeneous Datasets via Bucketing", ICLR 2022,
    https://arxiv.org/abs/2006.09365, Sec. 5 (ByzFL's Mimic(epsilon=target) fixes the target the same way).
    """
    _check(honest, f, "mimic")
    if isinstance(target, bool) or not isinstance(target, int) or not 0 <= target < honest.shape[0]:
        raise ValueError(f"mimic: target must be an integer in [0, {honest.shape[0] - 1}], got {target!r}")
    return _repeat(honest[target], f)


def gaussian(honest: Tensor, f: int, mu: float = 0.0, sigma: float = 1.0,
             generator: torch.Generator | None = None) -> Tensor:
    """Gaussian: each Byzantine client sends its own draw from N(mu, sigma^2 I) (ByzFL's Gaussian, f independent draws).

    A common baseline since Blanchard et al., NeurIPS 2017, https://arxiv.org/abs/1703.02757 (Sec. 5).
    """
    _check(honest, f, "gaussian")
    if not sigma >= 0:
        raise ValueError(f"gaussian: sigma must be >= 0, got {sigma}")
    noise = torch.randn(f, honest.shape[1], generator=generator, dtype=honest.dtype)  # (f, P), CPU generator
    return (noise * sigma + mu).to(honest.device)


def inf(honest: Tensor, f: int) -> Tensor:
    """Inf: every Byzantine client sends +inf in every coordinate (ByzFL's Inf; breaks any rule that averages it in)."""
    _check(honest, f, "inf")
    return torch.full((f, honest.shape[1]), float("inf"), dtype=honest.dtype, device=honest.device)


def line_search_objective(honest: Tensor, f: int, vector: Callable[[Tensor, Tensor], Tensor], rule: Rule,
                          scales: Tensor) -> Tensor:
    """||rule(honest + f copies of b(s)) - mean_h|| for every candidate scale s (S,), in one batched rule call.

    The objective of ByzFL's Optimal_ALittleIsEnough / Optimal_InnerProductManipulation and, squared, of the
    MoNNA code's line search (there the rule is the mean of the honest nodes' NNA outputs). The rule must
    broadcast over a leading dimension (every rule in flbook.robust does); the stack costs S (H + f) P floats.
    """
    _check(honest, f, "line_search")
    s, (h, p) = scales.shape[0], honest.shape
    b = vector(honest, scales)  # (S, P)
    stack = torch.cat([honest.expand(s, h, p), b[:, None, :].expand(s, f, p)], dim=1)  # (S, H + f, P)
    return (rule(stack) - honest.mean(0)).norm(dim=-1)  # (S,)


def line_searched(honest: Tensor, f: int, vector: Callable[[Tensor, Tensor], Tensor], rule: Rule,
                  scales: tuple[float, ...] = SCALES) -> tuple[Tensor, float]:
    """The Byzantine messages (f, P) at the scale that moves `rule`'s output farthest from the honest mean, and it."""
    grid = torch.as_tensor(scales, dtype=honest.dtype, device=honest.device)  # (S,)
    if grid.ndim != 1 or grid.numel() == 0:
        raise ValueError(f"line_searched: scales must be a non-empty sequence of floats, got {scales!r}")
    best = float(grid[line_search_objective(honest, f, vector, rule, grid).argmax()])
    return _repeat(vector(honest, torch.as_tensor(best, dtype=honest.dtype)), f), best


def flip_labels(y: Tensor, n_classes: int) -> Tensor:
    """Label flipping y -> (C - 1) - y, an involution (Allen-Zhu et al. 2021; the MoNNA code's `labelflipping`)."""
    if isinstance(n_classes, bool) or not isinstance(n_classes, int) or n_classes < 2:
        raise ValueError(f"flip_labels: n_classes must be an integer >= 2, got {n_classes!r}")
    if y.numel() and (int(y.min()) < 0 or int(y.max()) >= n_classes):
        raise ValueError(f"flip_labels: labels must lie in [0, {n_classes - 1}], got [{int(y.min())}, {int(y.max())}]")
    return (n_classes - 1) - y


ATTACKS: dict[str, Callable[..., Tensor]] = {
    "sign_flipping": sign_flipping, "foe": fall_of_empires, "alie": a_little_is_enough, "mimic": mimic,
    "gaussian": gaussian, "inf": inf}
SEARCHED = {"alie": alie_vector, "foe": foe_vector}  # the attacks whose scale a line search can pick
DATA_POISONING = ("label_flipping",)  # attacks on the Byzantine clients' training data: their messages go as trained


@dataclass(frozen=True)
class Attack:
    """An attack by name with its options, e.g. Attack("alie", {"z": 1.0}) or, line-searched against the rule in
    use, Attack("foe", rule=RobustRule("trimmed_mean", f=2)); Attack("label_flipping") poisons the Byzantine
    clients' data instead (they train on `flip_labels` of their labels and send what they trained)."""

    name: str = "sign_flipping"
    options: dict = field(default_factory=dict)
    rule: Rule | None = None  # set for ALIE / FOE: choose the scale by a batched line search against this rule
    scales: tuple[float, ...] = SCALES

    def __post_init__(self) -> None:
        if self.name not in ATTACKS and self.name not in DATA_POISONING:
            raise ValueError(f"attack must be one of {sorted([*ATTACKS, *DATA_POISONING])}, got {self.name!r}")
        if self.rule is not None and self.name not in SEARCHED:
            raise ValueError(f"a line search (rule=...) needs an attack in {sorted(SEARCHED)}, got {self.name!r}")

    @property
    def poisons_data(self) -> bool:
        """True for data poisoning (label flipping): the attack changes what Byzantine clients train on, not what they send."""
        return self.name in DATA_POISONING

    def __call__(self, honest: Tensor, f: int, generator: torch.Generator | None = None) -> Tensor:
        """The f Byzantine messages (f, P) crafted from the honest ones (H, P)."""
        if self.poisons_data:
            raise ValueError(f"{self.name} poisons the clients' data and crafts no message; run it through "
                             f"Federation.run(..., adversary=Adversary(Attack({self.name!r}), f))")
        if self.rule is not None:
            return line_searched(honest, f, SEARCHED[self.name], self.rule, self.scales)[0]
        extra = {"generator": generator} if self.name == "gaussian" else {}
        return ATTACKS[self.name](honest, f, **self.options, **extra)

    def __str__(self) -> str:
        args = ", ".join(f"{k}={v}" for k, v in self.options.items())
        searched = f", line search vs {self.rule}" if self.rule is not None else ""
        return f"{self.name}({args}{searched})" if args or searched else self.name


@dataclass(frozen=True)
class Adversary:
    """Which clients are Byzantine (a count, or a fraction of the clients, chosen by seed) and the attack they run.

    The round loop calls `clients(n)` once, then, between collecting and aggregating, `adversary(honest, f)` with
    the honest messages of the round and the number of Byzantine clients that take part.
    """

    attack: Attack = field(default_factory=Attack)
    f: int | float = 0  # an integer count, or a fraction in [0, 1)
    seed: int = 0

    def __post_init__(self) -> None:
        if isinstance(self.f, bool) or not isinstance(self.f, (int, float)) or self.f < 0 or (
                isinstance(self.f, float) and self.f >= 1):
            raise ValueError(f"f must be an integer count >= 0 or a fraction in [0, 1), got {self.f!r}")

    def n_byzantine(self, n_clients: int) -> int:
        """How many of n_clients are Byzantine: f itself, or floor(f * n_clients) for a fraction."""
        n = self.f if isinstance(self.f, int) else int(self.f * n_clients)
        if n > n_clients:
            raise ValueError(f"f must be at most n_clients={n_clients}, got {self.f}")
        return n

    def clients(self, n_clients: int) -> Tensor:
        """The ids of the Byzantine clients (sorted), drawn without replacement by `seed`."""
        g = torch.Generator().manual_seed(self.seed)
        return torch.randperm(n_clients, generator=g)[:self.n_byzantine(n_clients)].sort().values

    def __call__(self, honest: Tensor, f: int, generator: torch.Generator | None = None) -> Tensor:
        """Byzantine messages (f, P); pass a per-round generator for fresh Gaussian noise (default: from seed)."""
        return self.attack(honest, f, generator if generator is not None else torch.Generator().manual_seed(self.seed))

    def __str__(self) -> str:
        return f"{self.attack} by f={self.f}"
