"""Local SGD for language-model training: M workers as stacked parameters, an outer optimizer on pseudo-gradients,
and EDiT's pseudo-gradient penalty (anomaly elimination, weighted averaging, clipping), layer by layer.

Paper: Cheng et al., "EDiT: A Local-SGD-Based Efficient Distributed Training Method for Large Language Models",
ICLR 2025, https://arxiv.org/abs/2412.07210; official code: atorch `atorch/local_sgd/` (the card's reference for
the rules below, since the paper's text was not reachable). Each worker m takes inner AdamW steps on its own
batches; at a sync every unit (a parameter tensor here, an FSDP layer in the code) computes the pseudo-gradients
Delta_m = theta_hat - theta_m, and
  (1) anomaly elimination: worker m is dropped when its EWMA z-score of G_m = ||Delta_m|| exceeds z_0 (after a
      warm-up of W_e syncs): Delta_m <- 0, G_m <- G_m + 1e6;
  (2) weighted averaging: w_m = softmax_m(-G_m / T), Delta = sum_m w_m Delta_m;
  (3) clipping: Delta <- Delta min(1, phi / ||Delta||);
then an outer Nesterov step (DiLoCo): v <- mu v + Delta, theta_hat <- theta_hat - eta (Delta + mu v).
With outer lr 1, momentum 0 and no penalty it is plain Local SGD (theta_hat <- mean of theta_m).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import pandas as pd
import torch

from . import validation as V
from .transformer import next_token_loss


@dataclass(frozen=True)
class Penalty:
    """EDiT's pseudo-gradient penalty; each part can be switched off (all off: plain averaging)."""

    anomaly: bool = True
    weighting: bool = True
    clip: float | None = 1.0  # phi; None: no clipping
    temperature: float = 1.0  # T of the softmax weights
    ewma: float = 0.02  # alpha_e of the detector (the code's default)
    warmup: int = 5  # W_e syncs before the detector may flag (the code: 120; the card's small runs: 5)
    threshold: float = 3.0  # z_0

    def __post_init__(self) -> None:
        V.positive("temperature", self.temperature)
        V.in_range("ewma", self.ewma, 0.0, 1.0, lo_inclusive=False)
        V.integer("warmup", self.warmup, 1)
        V.positive("threshold", self.threshold)
        if self.clip is not None:
            V.positive("clip", self.clip)


def detector_init(n_workers: int, n_units: int) -> dict[str, torch.Tensor]:
    """EWMA statistics of each worker's pseudo-gradient norm per unit: mean, variance, count (all zero)."""
    zeros = torch.zeros(n_workers, n_units, dtype=torch.float64)
    return {"mean": zeros, "var": zeros.clone(), "count": torch.zeros((), dtype=torch.long)}


def detect(norms: torch.Tensor, state: dict[str, torch.Tensor], p: Penalty) -> tuple[torch.Tensor, dict]:
    """(flagged (M, U) bool, new state): z = (G - mu_e) / sigma_e > z_0 once `count` >= W_e; then the EWMA update
    mu_e <- mu_e + a (G - mu_e), sigma_e^2 <- (1 - a)(sigma_e^2 + a (G - mu_old)(G - mu_e)) on every norm."""
    g = norms.double()  # (M, U)
    mean, var, count = state["mean"], state["var"], state["count"]
    z = (g - mean) / var.sqrt().clamp(min=1e-12)  # (M, U)
    flagged = (z > p.threshold) & (count >= p.warmup)
    first = count == 0  # the first sync seeds the mean
    new_mean = torch.where(first, g, mean + p.ewma * (g - mean))
    new_var = torch.where(first, torch.zeros_like(var), (1 - p.ewma) * (var + p.ewma * (g - mean) * (g - new_mean)))
    return flagged, {"mean": new_mean, "var": new_var, "count": count + 1}


def unit_norms(deltas: torch.Tensor, units: torch.Tensor, n_units: int) -> torch.Tensor:
    """||Delta_m restricted to unit u||_2 for every worker and unit: (M, P), (P,) unit ids -> (M, U)."""
    squares = torch.zeros(deltas.shape[0], n_units, dtype=deltas.dtype).index_add_(1, units, deltas.square())
    return squares.sqrt()


def penalized_average(deltas: torch.Tensor, units: torch.Tensor, n_units: int, state: dict, p: Penalty | None
                      ) -> tuple[torch.Tensor, torch.Tensor, dict]:
    """The reduced pseudo-gradient Delta (P,), the weights (M, U) and the detector's new state; None: plain mean."""
    m = deltas.shape[0]
    if p is None:
        return deltas.mean(0), torch.full((m, n_units), 1.0 / m), state
    norms = unit_norms(deltas, units, n_units)  # (M, U)
    flagged = torch.zeros_like(norms, dtype=torch.bool)
    if p.anomaly:
        flagged, state = detect(norms, state, p)
        norms = torch.where(flagged, norms + 1e6, norms)  # (1) the anomalous worker's norm is pushed away...
    if p.weighting:
        weights = torch.softmax(-norms / p.temperature, dim=0)  # (2) w_m = softmax_m(-G_m / T)   (M, U)
    else:
        keep = (~flagged).double()
        weights = keep / keep.sum(0).clamp(min=1)  # plain mean of the workers kept
    weights = torch.where(flagged, 0.0, weights)  # ...and its Delta_m set to 0
    weights = weights / weights.sum(0).clamp(min=1e-30)  # Delta = sum_m w_m Delta_m / sum_m w_m
    delta = (weights[:, units].to(deltas.dtype) * deltas).sum(0)  # (P,)
    if p.clip is not None:  # (3) per unit: Delta_u <- Delta_u min(1, phi / ||Delta_u||)
        norm = unit_norms(delta[None], units, n_units)[0]  # (U,)
        delta = delta * (p.clip / norm.clamp(min=1e-30)).clamp(max=1.0)[units].to(delta.dtype)
    return delta, weights, state


def outer_step(anchor: torch.Tensor, delta: torch.Tensor, velocity: torch.Tensor, lr: float, momentum: float,
               nesterov: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """Outer SGD on the pseudo-gradient: v <- mu v + Delta; theta_hat <- theta_hat - eta (Delta + mu v) (Nesterov)
    or theta_hat - eta v. Returns (new anchor (P,), new velocity (P,))."""
    velocity = momentum * velocity + delta
    step = delta + momentum * velocity if nesterov else velocity
    return anchor - lr * step, velocity


# ------------------------------------------------------------------------------------------------ a corpus
def markov_corpus(n_sequences: int, length: int, vocab: int = 16, *, concentration: float = 0.3, seed: int = 0
                  ) -> tuple[torch.Tensor, float]:
    """Sequences (N, T) of a random second-order Markov chain, and its entropy rate in nats (the loss floor).

    p(x_t | x_{t-2}, x_{t-1}) ~ Dirichlet(concentration) for every context, drawn from `seed`."""
    n_sequences, length = V.integer("n_sequences", n_sequences, 1), V.integer("length", length, 3)
    vocab = V.integer("vocab", vocab, 2)
    g = torch.Generator().manual_seed(V.seed(seed))
    table = torch.distributions.Dirichlet(torch.full((vocab,), float(concentration)))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        probs = table.sample((vocab, vocab)).double()  # (V, V, V)
    tokens = torch.empty(n_sequences, length, dtype=torch.long)
    tokens[:, :2] = torch.randint(0, vocab, (n_sequences, 2), generator=g)
    for t in range(2, length):
        tokens[:, t] = torch.multinomial(probs[tokens[:, t - 2], tokens[:, t - 1]].float(), 1, generator=g)[:, 0]
    # entropy rate under the stationary context distribution, estimated from the sampled contexts
    p = probs[tokens[:, :-2], tokens[:, 1:-1]]  # (N, T-2, V)
    entropy = float(-(p * p.clamp(min=1e-30).log()).sum(-1).mean())
    return tokens, entropy


# ------------------------------------------------------------------------------------------------ training
@dataclass(frozen=True)
class Method:
    """How M workers synchronise: every `interval` inner steps (EDiT) or every `time_interval` time units (A-EDiT),
    through an outer SGD (lr, momentum, Nesterov) on the pseudo-gradient reduced by `penalty` (None: mean).
    `data_parallel` averages the gradients at every step instead (synchronous data-parallel training)."""

    name: str
    interval: int = 8
    outer_lr: float = 1.0
    momentum: float = 0.0
    nesterov: bool = True
    penalty: Penalty | None = None
    time_interval: float | None = None
    data_parallel: bool = False
    inner: str = "adamw"  # the workers' optimizer: "adamw" or "sgd"

    def __post_init__(self) -> None:
        V.choice("inner", self.inner, ("adamw", "sgd"))
        V.integer("interval", self.interval, 1)
        V.positive("outer_lr", self.outer_lr)
        V.in_range("momentum", self.momentum, 0.0, 1.0, hi_inclusive=False)
        if self.time_interval is not None:
            V.positive("time_interval", self.time_interval)


def adamw(theta: torch.Tensor, grad: torch.Tensor, state: dict[str, torch.Tensor], active: torch.Tensor, lr: torch.Tensor,
          weight_decay: float = 0.0, betas: tuple[float, float] = (0.9, 0.95), eps: float = 1e-8
          ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """One AdamW step (Loshchilov & Hutter 2019) for stacked workers (M, P), only where `active` (M,); lr (M,)."""
    b1, b2 = betas
    t = state["t"] + active.long()  # (M,)
    m = torch.where(active[:, None], b1 * state["m"] + (1 - b1) * grad, state["m"])  # (M, P)
    v = torch.where(active[:, None], b2 * state["v"] + (1 - b2) * grad.square(), state["v"])  # (M, P)
    tc = t.clamp(min=1)[:, None].double()
    step = (m / (1 - b1**tc)) / ((v / (1 - b2**tc)).sqrt() + eps) + weight_decay * theta  # (M, P)
    return torch.where(active[:, None], theta - lr[:, None] * step.to(theta.dtype), theta), {"m": m, "v": v, "t": t}


def train(method: Method, model, tokens: torch.Tensor, held_out: torch.Tensor, *, n_workers: int = 8, syncs: int = 50,
          batch_size: int = 16, lr: float | Sequence[float] = 3e-3, speeds: torch.Tensor | None = None,
          corrupt_at: tuple[int, ...] = (), corrupt_scale: float = 10.0, seed: int | Sequence[int] = 0) -> pd.DataFrame:
    """Train the causal LM `model` (a FlatModel) with M workers, each on its own shard of `tokens` (N, T).

    Each window between syncs, worker m takes k_m inner AdamW steps: `interval` for step-based sync, or
    floor(speed_m * time_interval) for time-based sync (A-EDiT); the window lasts max_m k_m / speed_m time units
    (step-based sync waits for the slowest worker). At the syncs in `corrupt_at`, worker 0 uses `corrupt_scale`
    times the learning rate (the card's corruption scenario). Several runs (a sequence of seeds and/or of learning
    rates, broadcast against each other) are stacked like workers: (R runs x M workers, P) parameters, one vmapped
    gradient per step. One row per run and sync: time, steps, held-out loss of the synced model, the weight given
    to worker 0 and whether it was flagged."""
    m_workers = V.integer("n_workers", n_workers, 1)
    seeds = [V.seed(s) for s in ((seed,) if isinstance(seed, int) else seed)]
    lrs = [V.positive("lr", x) for x in ((lr,) if isinstance(lr, (int, float)) else lr)]
    if len(seeds) != len(lrs) and min(len(seeds), len(lrs)) != 1:
        raise ValueError(f"seed and lr must be single values or sequences of one length, got {seeds} and {lrs}")
    r_runs = max(len(seeds), len(lrs))
    seeds, lrs = seeds * (r_runs // len(seeds)), lrs * (r_runs // len(lrs))
    speeds = torch.ones(m_workers, dtype=torch.float64) if speeds is None else torch.as_tensor(speeds).double()
    if speeds.shape != (m_workers,) or not (speeds > 0).all():
        raise ValueError(f"speeds must be {m_workers} positive numbers, got {speeds.tolist()}")
    gens = [torch.Generator().manual_seed(s) for s in seeds]
    shards = [sh for g in gens for sh in torch.randperm(len(tokens), generator=g).chunk(m_workers)]  # R*M shards
    anchor = torch.stack([model.init(s) for s in seeds])  # theta_hat of every run (R, P)
    theta = anchor.repeat_interleave(m_workers, 0)  # (R*M, P)
    units = torch.repeat_interleave(torch.arange(len(model.numels)), torch.tensor(model.numels))  # (P,) unit of each
    n_units = len(model.numels)
    opt = {"m": torch.zeros_like(theta), "v": torch.zeros_like(theta), "t": torch.zeros(len(theta), dtype=torch.long)}
    velocity, detector = torch.zeros_like(anchor), [detector_init(m_workers, n_units) for _ in range(r_runs)]
    grad = torch.func.vmap(torch.func.grad(lambda th, xb: next_token_loss(model(th, xb), xb)))
    if method.time_interval is None:
        steps = torch.full((m_workers,), method.interval if not method.data_parallel else 1)
    else:
        steps = torch.floor(speeds * method.time_interval).long().clamp(min=1)
    window = float((steps / speeds).max())  # time units until the last worker reaches the sync
    lr_runs = torch.tensor(lrs, dtype=torch.float64).repeat_interleave(m_workers)  # (R*M,)
    rows, clock, done = [], 0.0, torch.zeros(m_workers, dtype=torch.long)
    for s in range(1, syncs + 1):
        scale = torch.ones(r_runs, m_workers, dtype=torch.float64)
        if s in corrupt_at:
            scale[:, 0] = corrupt_scale
        step_lr = lr_runs * scale.reshape(-1)  # (R*M,)
        for k in range(int(steps.max())):
            active = (k < steps).repeat(r_runs)  # (R*M,)
            picks = torch.stack([sh[torch.randint(0, len(sh), (batch_size,), generator=gens[i // m_workers])]
                                 for i, sh in enumerate(shards)])  # (R*M, B)
            grads = grad(theta, tokens[picks])  # (R*M, P)
            if method.data_parallel:  # all-reduce of the gradients every step, within each run
                grads = grads.view(r_runs, m_workers, -1).mean(1).repeat_interleave(m_workers, 0)
            if method.inner == "sgd":
                theta = torch.where(active[:, None], theta - step_lr[:, None].to(theta.dtype) * grads, theta)
            else:
                theta, opt = adamw(theta, grads, opt, active, step_lr)
        done += steps
        clock += window
        workers = theta.view(r_runs, m_workers, -1)  # (R, M, P)
        for r in range(r_runs):
            if method.data_parallel:
                anchor[r], weight0, flagged0 = workers[r, 0], 1.0 / m_workers, False
            else:
                delta, weights, detector[r] = penalized_average(anchor[r][None] - workers[r], units, n_units,
                                                                detector[r], method.penalty)
                anchor[r], velocity[r] = outer_step(anchor[r], delta.to(anchor.dtype), velocity[r], method.outer_lr,
                                                    method.momentum, method.nesterov)
                weight0, flagged0 = float(weights[0].mean()), bool((weights[0] == 0).all())
            with torch.no_grad():
                loss = float(next_token_loss(model(anchor[r], held_out), held_out))
            if not torch.isfinite(torch.tensor(loss)):
                raise FloatingPointError(f"{method.name} diverged at sync {s} (held-out loss {loss}, lr {lrs[r]})")
            rows.append({"method": method.name, "sync": s, "time": clock, "steps": int(done.sum()), "loss": loss,
                         "weight_0": weight0, "flagged_0": flagged0, "corrupted": s in corrupt_at, "seed": seeds[r],
                         "lr": lrs[r]})
        theta = anchor.repeat_interleave(m_workers, 0)  # every worker restarts from its run's synced model
    return pd.DataFrame(rows)
