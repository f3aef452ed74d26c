"""Annealed importance sampling (AIS) of log p(x), and its BDMC sandwich on simulated data.

AIS (Neal, 2001) moves chains from a start distribution q(z) to the posterior through the
geometric path ``f_b(z) = q(z)^(1 - b) p(x, z)^b``, ``0 = b_0 < b_1 < ... < b_T = 1``,
adding ``(b_t - b_{t-1}) (log p(x, z) - log q(z))`` to each chain's log-weight before the
transition at ``b_t``; the mean weight is an unbiased estimate of p(x), so the log of the
mean over chains is a stochastic lower bound on log p(x) that approaches it as T grows.

The chains move in the start distribution's *noise*: a Gaussian start (the encoder's, a
refined one, the NVAE's hierarchy given the groups above, the prior) or a flow on one is
``z = T(e)`` with ``e ~ N(0, I)``, and the path in ``e`` is
``N(e)^(1 - b) [p(x, T(e)) |dT/de|]^b``: the same path, the same weights, and the same
estimate (a change of variables moves neither), but flows need no inversion and HMC sees
coordinates that the start has already whitened. Transitions are Hamiltonian Monte Carlo
on all latent sites at once. Step sizes are per datapoint and per temperature, adapted
toward a target acceptance rate by a short pilot run and then held fixed for the chains
whose weights count: AIS stays exact only if no transition depends on the counted
chains' own past.

BDMC (Grosse, Ghahramani & Adams, 2015; Wu, Burda, Salakhutdinov & Grosse, 2017): on data
simulated from the model, ``z ~ p(z)``, ``x ~ p(x | z)``, the drawn ``z`` is an exact
posterior sample of its ``x``. AIS run backwards from it, ``b = 1`` down to 0, gives an
unbiased estimate of 1 / p(x), so its negated log is a stochastic *upper* bound. The
distance between the forward and the reverse estimate bounds how far the schedule is
from log p(x) on data like the model's own.

References:
    Neal, "Annealed Importance Sampling", Statistics and Computing, 2001; Grosse,
    Ghahramani & Adams, "Sandwiching the marginal likelihood using bidirectional Monte
    Carlo", arXiv:1511.02543, 2015; Wu, Burda, Salakhutdinov & Grosse, "On the
    Quantitative Analysis of Decoder-Based Generative Models", ICLR 2017; Cremer, Li &
    Duvenaud, "Inference Suboptimality in Variational Autoencoders", ICML 2018.
"""

from __future__ import annotations

import contextlib
import itertools
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import pyro
import torch
from pyro import poutine
from pyro.poutine.messenger import Messenger
from pyro.poutine.util import prune_subsample_sites, site_is_subsample
from torch.distributions import Distribution, Independent, Normal, TransformedDistribution

from lvmtoolkit.core.direct_elbo import observed_log_prob
from lvmtoolkit.core.elbo import DetachedScore, _per_datapoint, _site_log_prob
from lvmtoolkit.core.model import Model
from lvmtoolkit.core.posterior import Posterior
from lvmtoolkit.core.runtime import frozen, seeded
from lvmtoolkit.core.validation import check_batch
from lvmtoolkit.errors import LvmError

PRIOR = "prior"
"""Pass as ``start`` to anneal from the model's prior p(z) instead of a posterior."""

Start = Posterior | str

ADAPT_RATE = 1.0


@dataclass(frozen=True)
class AISSchedule:
    """How AIS anneals: the path, the transitions and the chains.

    The defaults were measured on the bundled VAE and GMVAE (docs/results/gaps.md): from
    their refined posteriors q*, the BDMC sandwich on 100 simulated datapoints is within
    0.02 nats of zero width. A posterior far from the start needs more temperatures: on
    the correlated linear-Gaussian model of the tests, T = 100 falls 0.2 nats short of
    the exact log p(x) from q*, and T = 300 to 1000 comes within 0.1. BDMC (`bdmc`) tells
    which case a model is in.

    Attributes:
        num_steps: T, the intermediate distributions after the start (the last is the
            posterior); one is importance sampling from the start plus one transition.
        leapfrog_steps: Leapfrog steps per HMC transition.
        num_chains: Independent chains per datapoint (log p̂ is the log of their mean
            weight; their spread gives its standard error).
        pilot_chains: Chains per datapoint of the pilot run that adapts the step sizes,
            which the counted chains then use as fixed (their weights are not used).
        step_size: Initial HMC step size in the start's noise coordinates.
        target_acceptance: Acceptance rate the per-datapoint step sizes adapt toward.
        path: Spacing of the temperatures: ``"sigmoid"`` (dense at both ends, Grosse et
            al. 2015) or ``"linear"``.
    """

    num_steps: int = 100
    leapfrog_steps: int = 5
    num_chains: int = 8
    pilot_chains: int = 2
    step_size: float = 0.2
    target_acceptance: float = 0.65
    path: str = "sigmoid"

    def __post_init__(self) -> None:
        for name in ("num_steps", "leapfrog_steps", "num_chains", "pilot_chains"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int):
                raise LvmError(f"AIS {name} must be an integer, got {value!r}")
        if self.num_steps < 1:
            raise LvmError(
                f"AIS num_steps must be at least 1 intermediate distribution, got {self.num_steps}"
            )
        if self.leapfrog_steps < 1:
            raise LvmError(f"AIS leapfrog_steps must be at least 1, got {self.leapfrog_steps}")
        if self.num_chains < 1:
            raise LvmError(f"AIS num_chains must be at least 1, got {self.num_chains}")
        if self.pilot_chains < 1:
            raise LvmError(f"AIS pilot_chains must be at least 1, got {self.pilot_chains}")
        if not (math.isfinite(self.step_size) and self.step_size > 0):
            raise LvmError(f"AIS step_size must be a positive finite number, got {self.step_size}")
        if not (0 < self.target_acceptance < 1):
            raise LvmError(f"AIS target_acceptance must be in (0, 1), got {self.target_acceptance}")
        if self.path not in ("sigmoid", "linear"):
            raise LvmError(f"AIS path must be 'sigmoid' or 'linear', got {self.path!r}")

    def temperatures(self) -> torch.Tensor:
        """``b_0 = 0, ..., b_T = 1`` (float64, length T + 1)."""
        t = torch.linspace(0.0, 1.0, self.num_steps + 1, dtype=torch.float64)
        if self.path == "sigmoid":
            s = torch.sigmoid(4.0 * (2.0 * t - 1.0))
            t = (s - s[0]) / (s[-1] - s[0])
        return t

    @property
    def passes_per_chain(self) -> int:
        """Model evaluations (forward and backward) one chain makes: T x leapfrog + 1."""
        return self.num_steps * self.leapfrog_steps + 1

    @property
    def passes_per_datapoint(self) -> int:
        """Model evaluations per datapoint, the pilot's chains included."""
        return (self.num_chains + self.pilot_chains) * self.passes_per_chain

    def describe(self) -> str:
        """The schedule in words, for a report's protocol."""
        return (
            f"{self.num_steps} {self.path} temperatures, HMC with {self.leapfrog_steps} leapfrog "
            f"steps (step size from {self.step_size}, adapted per datapoint and temperature "
            f"toward {self.target_acceptance:.0%} acceptance by {self.pilot_chains} pilot "
            f"chains), {self.num_chains} chains per datapoint"
        )


@dataclass
class AISResult:
    """Per-datapoint AIS estimates.

    Attributes:
        log_px: log p̂(x): log of the mean AIS weight over chains, shape ``(N,)``.
        stderr: Its standard error from the spread of the chains' weights (delta method),
            shape ``(N,)``; NaN with a single chain.
        acceptance: Mean HMC acceptance rate of each datapoint's chains, ``(N,)``.
        step_size: Final adapted step size of each datapoint, ``(N,)``.
        passes: Model evaluations per datapoint (forward and backward, all chains,
            the pilot's included).
        seconds: Wall time.
        steps: The step size of every transition, shape ``(T, N)`` (the pilot's).
    """

    log_px: torch.Tensor
    stderr: torch.Tensor
    acceptance: torch.Tensor
    step_size: torch.Tensor
    passes: int
    seconds: float
    steps: torch.Tensor


# --- the start distribution's noise -----------------------------------------------------------


def _rows_sum(value: torch.Tensor, rows: int) -> torch.Tensor:
    return value.reshape(rows, -1).sum(1) if value.dim() > 1 else value.expand(rows)


def _normal_of(fn: Distribution, site: str) -> tuple[Normal, list[Any]]:
    """The Normal under ``fn`` and the transforms applied after it, or an error naming both."""
    if isinstance(fn, DetachedScore):
        fn = fn.fn
    transforms: list[Any] = []
    if isinstance(fn, TransformedDistribution):
        transforms = list(fn.transforms)
        fn = fn.base_dist
    while isinstance(fn, Independent):
        fn = fn.base_dist
    if not isinstance(fn, Normal):
        raise LvmError(
            f"AIS moves chains in the start distribution's noise, so every latent site must "
            f"be a Normal or a flow on one; site {site!r} is a {type(fn).__name__}"
        )
    return fn, transforms


def _push(fn: Distribution, noise: torch.Tensor, site: str) -> tuple[torch.Tensor, torch.Tensor]:
    """``z = T(e)`` for the site's distribution and ``log |dT/de|`` per row."""
    normal, transforms = _normal_of(fn, site)
    rows = noise.shape[0]
    z = normal.loc + normal.scale * noise
    log_det = _rows_sum(normal.scale.log().expand_as(z), rows)
    for step in transforms:
        y = step(z)
        log_det = log_det + _rows_sum(step.log_abs_det_jacobian(z, y), rows)
        z = y
    return z, log_det


def _pull(fn: Distribution, z: torch.Tensor, site: str) -> torch.Tensor:
    """``e = T^-1(z)``: the noise that the site's distribution maps to ``z``."""
    normal, transforms = _normal_of(fn, site)
    for step in reversed(transforms):
        z = step.inv(z)
    return (z - normal.loc) / normal.scale


class _NoiseSites(Messenger):
    """Sets every latent site of a program from noise (``noise``) or from values (``values``).

    With noise, a site's value is ``T(e)`` and ``log_det`` sums ``log |dT/de|``; with
    values, the value is given and ``pulled`` records the noise that gives it.
    """

    def __init__(
        self,
        noise: dict[str, torch.Tensor] | None = None,
        values: dict[str, torch.Tensor] | None = None,
    ):
        super().__init__()
        self.noise, self.values = noise, values
        self.log_det: torch.Tensor | float = 0.0
        self.pulled: dict[str, torch.Tensor] = {}

    def _pyro_sample(self, msg: dict[str, Any]) -> None:
        if msg["is_observed"] or site_is_subsample(msg):
            return
        name = msg["name"]
        given = self.noise if self.noise is not None else self.values
        if given is None or name not in given:
            raise LvmError(f"latent site {name!r} is not among the model's latent_shapes")
        if self.noise is not None:
            msg["value"], log_det = _push(msg["fn"], self.noise[name], name)
            self.log_det = self.log_det + log_det
        else:
            msg["value"] = self.values[name]  # type: ignore[index]
            self.pulled[name] = _pull(msg["fn"], msg["value"], name)


def _log_joint(trace: Any) -> torch.Tensor:
    total: torch.Tensor | int = 0
    for site in prune_subsample_sites(trace).nodes.values():
        if site["type"] == "sample":
            total = total + _per_datapoint(_site_log_prob(site), site)
    return total  # type: ignore[return-value]


class _Path:
    """``h(e) = log p(x, T(e)) + log |dT/de|`` for rows of (datapoint, chain).

    The annealed target at temperature b is ``(1 - b) log N(e; 0, I) + b h(e)``, and the
    importance log-weight ``log p(x, z) - log q(z)`` is ``h(e) - log N(e; 0, I)``.
    """

    def __init__(self, model: Model, start: Start, x: torch.Tensor):
        self.model, self.start, self.x = model, start, x
        self.shapes = dict(model.latent_shapes)
        self.sizes = [math.prod(shape) for shape in self.shapes.values()]
        self.dim = sum(self.sizes)
        prior = model.latent_prior(x.shape[0], x)
        q = prior if isinstance(start, str) else start.mean_field(x)
        # Flat model and mean-field start: the densities directly, no Pyro traces. Both
        # are fixed (model and start are frozen), so they are built once, not per pass.
        self.direct = prior is not None and q is not None and list(q) == list(prior)
        self.prior, self.q = (prior, q) if self.direct else ({}, {})

    def split(self, flat: torch.Tensor) -> dict[str, torch.Tensor]:
        parts = flat.split(self.sizes, dim=1)
        return {
            name: part.reshape(flat.shape[0], *shape)
            for (name, shape), part in zip(self.shapes.items(), parts, strict=True)
        }

    def _h(self, noise: dict[str, torch.Tensor]) -> torch.Tensor:
        model, x = self.model, self.x
        if self.direct:
            total: torch.Tensor | int = 0
            z = {}
            for name, fn in self.q.items():
                z[name], log_det = _push(fn, noise[name], name)
                total = total + log_det + self.prior[name].log_prob(z[name])
            return total + observed_log_prob(model.decode(z), x)
        driven = _NoiseSites(noise=noise)
        if isinstance(self.start, str):
            with driven:
                trace = poutine.trace(model.model).get_trace(x)
        else:
            with driven:
                guide = poutine.trace(self.start.guide).get_trace(x)
            trace = poutine.trace(poutine.replay(model.model, trace=guide)).get_trace(x)
            extra = set(prune_subsample_sites(guide).nodes) - set(trace.nodes)
            if extra:
                raise LvmError(f"AIS needs a guide over the model's sites; extra: {sorted(extra)}")
        return _log_joint(trace) + driven.log_det

    def __call__(self, flat: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``h`` and its gradient in the noise at ``flat`` (shape ``(rows, dim)``)."""
        with torch.enable_grad():
            flat = flat.detach().requires_grad_(True)
            h = self._h(self.split(flat))
            (grad,) = torch.autograd.grad(h.sum(), flat)
        return h.detach(), grad

    def noise_of(self, z: dict[str, torch.Tensor]) -> torch.Tensor:
        """The noise that the start maps to the latents ``z`` (for reverse chains)."""
        model, x, rows = self.model, self.x, self.x.shape[0]
        if self.direct:
            pulled = {name: _pull(fn, z[name], name) for name, fn in self.q.items()}
        else:
            sites = _NoiseSites(values=z)
            program = model.model if isinstance(self.start, str) else self.start.guide
            with sites:
                poutine.trace(program).get_trace(x)
            pulled = sites.pulled
        return torch.cat([pulled[name].reshape(rows, -1) for name in self.shapes], dim=1)


# --- HMC and the annealing weights ---------------------------------------------------------


def _log_normal(e: torch.Tensor) -> torch.Tensor:
    return -0.5 * (e**2).sum(1) - 0.5 * e.shape[1] * math.log(2 * math.pi)


def _weight_increment(
    beta_from: float, beta_to: float, h: torch.Tensor, e: torch.Tensor
) -> torch.Tensor:
    """``log f_to(e) - log f_from(e)``: the AIS log-weight gained between two temperatures."""
    return (beta_to - beta_from) * (h - _log_normal(e))


def _accept(log_ratio: torch.Tensor) -> torch.Tensor:
    """The Metropolis test: accept each proposal with probability min(1, exp(log_ratio))."""
    return torch.rand_like(log_ratio).log() < log_ratio


def _hmc(
    path: _Path,
    e: torch.Tensor,
    h: torch.Tensor,
    grad: torch.Tensor,
    beta: float,
    step: torch.Tensor,
    leapfrog_steps: int,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """One HMC transition that leaves ``(1 - b) log N(e) + b h(e)`` invariant, every row.

    Returns the new ``(e, h, grad)``, each row's acceptance probability, and which rows
    met a NaN log-density. A proposal whose energy or gradient is infinite or NaN is
    rejected (a divergence); a NaN log-density is also reported, since it is a fault of
    the model rather than a region of zero density.
    """

    def potential(e_: torch.Tensor, h_: torch.Tensor) -> torch.Tensor:
        return -((1 - beta) * _log_normal(e_) + beta * h_)

    def force(e_: torch.Tensor, g_: torch.Tensor) -> torch.Tensor:
        return -(1 - beta) * e_ + beta * g_  # minus the potential's gradient

    size = step[:, None]
    momentum = torch.randn_like(e)
    p = momentum + 0.5 * size * force(e, grad)
    e_new, h_new, g_new = e, h, grad
    diverged = torch.zeros_like(h, dtype=torch.bool)
    nan = torch.zeros_like(h, dtype=torch.bool)
    for k in range(leapfrog_steps):
        e_new = e_new + size * p
        h_new, g_new = path(e_new)
        nan |= torch.isnan(h_new) & ~diverged
        diverged |= ~(torch.isfinite(g_new).all(1) & torch.isfinite(h_new))
        g_new = torch.where(diverged[:, None], 0.0, g_new)  # keeps the arithmetic finite
        p = p + (size if k < leapfrog_steps - 1 else 0.5 * size) * force(e_new, g_new)
    h_new = torch.where(diverged, -math.inf, h_new)
    current = potential(e, h) + 0.5 * (momentum**2).sum(1)
    proposed = potential(e_new, h_new) + 0.5 * (p**2).sum(1)
    log_ratio = current - proposed
    log_ratio = torch.where(torch.isfinite(log_ratio), log_ratio, -math.inf)
    accepted = _accept(log_ratio)
    keep = accepted[:, None]
    return (
        torch.where(keep, e_new, e),
        torch.where(accepted, h_new, h),
        torch.where(keep, g_new, grad),
        log_ratio.clamp(max=0).exp(),
        nan,
    )


def _adapt(step: torch.Tensor, acceptance: torch.Tensor, target: float) -> torch.Tensor:
    # log(step) moves by the acceptance's distance from the target, a stochastic
    # approximation that finds the scale within a few dozen transitions from any start.
    return (step * (ADAPT_RATE * (acceptance - target)).exp()).clamp(1e-4, 4.0)


def _check_finite(h: torch.Tensor, model: Model, datapoints: torch.Tensor, what: str) -> None:
    bad = ~torch.isfinite(h)
    if bad.any():
        row = int(datapoints[bad.nonzero()[0, 0]])
        raise LvmError(
            f"log p(x, z) of model {model.name or type(model).__name__!r} is not finite {what} "
            f"(datapoint {row}); AIS cannot anneal through it"
        )


def _anneal(
    path: _Path,
    e: torch.Tensor,
    betas: torch.Tensor,
    schedule: AISSchedule,
    chains: int,
    datapoints: torch.Tensor,
    steps: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Run the rows from ``betas[0]`` to ``betas[-1]``; log-weights, acceptance, step sizes.

    Rows are ``chains`` blocks of the same datapoints (row ``r`` is datapoint ``r % n``).
    With ``steps`` (shape ``(T, n)``), transition t uses ``steps[t]``; without, the step
    sizes adapt per datapoint from its chains' mean acceptance, and the ones used are
    returned (a pilot run's output, to be fixed in the run whose weights count).
    """
    n = e.shape[0] // chains
    h, grad = path(e)
    _check_finite(h, path.model, datapoints, "at the chains' starting points")
    log_w = torch.zeros_like(h)
    step = torch.full((n,), schedule.step_size, device=e.device, dtype=e.dtype)
    used, accepted = [], torch.zeros(n, device=e.device, dtype=e.dtype)
    for t, (before, beta) in enumerate(itertools.pairwise(betas.tolist())):
        log_w = log_w + _weight_increment(before, beta, h, e)
        if steps is not None:
            step = steps[t]
        used.append(step)
        e, h, grad, rate, nan = _hmc(
            path, e, h, grad, beta, step.repeat(chains), schedule.leapfrog_steps
        )
        _check_finite(
            torch.where(nan, math.nan, 0.0),
            path.model,
            datapoints.repeat(chains),
            f"at a proposal at temperature {beta:.4g}",
        )
        per_datapoint = rate.view(chains, n).mean(0)
        accepted += per_datapoint
        if steps is None:
            step = _adapt(step, per_datapoint, schedule.target_acceptance)
    _check_finite(log_w, path.model, datapoints.repeat(chains), "along the annealing path")
    return log_w, accepted / len(used), torch.stack(used)


def _run(
    model: Model,
    x: torch.Tensor,
    start: Start,
    betas: torch.Tensor,
    schedule: AISSchedule,
    datapoints: torch.Tensor,
    z: dict[str, torch.Tensor] | None = None,
    steps: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Pilot then counted run on ``datapoints``: forward from the start's noise, or with
    ``z`` (exact posterior samples) in reverse from them.

    The step sizes of the counted run are the pilot's, fixed in advance: adapting them
    from the counted chains' own acceptance makes each transition depend on the chains'
    past, which biased log p̂(x) upwards by 0.1 nats on a linear-Gaussian model.
    """
    if steps is None:
        pilot = datapoints.repeat(schedule.pilot_chains)
        pilot_path = _Path(model, _rows(start, pilot), x[pilot])
        noise = torch.randn(pilot.shape[0], pilot_path.dim, device=x.device, dtype=x.dtype)
        _, _, steps = _anneal(pilot_path, noise, betas, schedule, schedule.pilot_chains, datapoints)
    index = datapoints.repeat(schedule.num_chains)
    path = _Path(model, _rows(start, index), x[index])
    if z is None:
        e = torch.randn(index.shape[0], path.dim, device=x.device, dtype=x.dtype)
    else:
        e = path.noise_of({name: value[index] for name, value in z.items()})
    return _anneal(path, e, betas, schedule, schedule.num_chains, datapoints, steps)


def _combine(log_w: torch.Tensor, chains: int) -> tuple[torch.Tensor, torch.Tensor]:
    """log of the mean weight over chains and its delta-method standard error."""
    w = log_w.reshape(chains, -1).double()
    log_mean = torch.logsumexp(w, 0) - math.log(chains)
    if chains < 2:
        return log_mean.float(), torch.full_like(log_mean, math.nan).float()
    ratio = (w - w.max(0).values).exp()
    stderr = ratio.std(0) / (ratio.mean(0) * math.sqrt(chains))
    return log_mean.float(), stderr.float()


def _datapoint_parts(n: int, chains: int, max_rows: int) -> list[slice]:
    per_part = max(1, max_rows // chains)
    return [slice(i, min(i + per_part, n)) for i in range(0, n, per_part)]


def _evaluation_start(start: Start, x: torch.Tensor) -> Start:
    if isinstance(start, str):
        if start != PRIOR:
            raise LvmError(f"AIS start must be a Posterior or {PRIOR!r}, got {start!r}")
        return start
    start.check_batch_size(x.shape[0])
    return start.evaluation_form(x)


def _rows(start: Start, index: torch.Tensor) -> Start:
    return start if isinstance(start, str) else start.rows(index)


def ais_log_px(
    model: Model,
    x: torch.Tensor,
    start: Start,
    schedule: AISSchedule | None = None,
    *,
    seed: int | None = 0,
    max_rows: int | None = None,
    log: Callable[[str], None] | None = None,
) -> AISResult:
    """AIS estimate of log p(x) for each datapoint, from ``start`` to the posterior.

    Args:
        model: The generative model (its parameters are not changed).
        x: Batch of shape ``(N, *model.data_shape)`` (binary for a Bernoulli model).
        start: The start distribution: a posterior for these N datapoints (amortized,
            refined, with flows) or ``"prior"``. Every latent site must be a Normal or a
            flow on one.
        schedule: Temperatures, transitions and chains; the defaults of `AISSchedule`.
        seed: Seed of the chains' noise (None: the global RNG).
        max_rows: Bound on (datapoint, chain) rows per pass (memory); None: the model's
            `Model.chunk_size`.
        log: Called with a progress line per block of datapoints.

    Returns:
        An `AISResult`.

    Raises:
        LvmError: ``x`` does not fit the model, the start is not a Gaussian or a flow on
            one, or the model's log-density is not finite at the start or along the path.
    """
    schedule = schedule or AISSchedule()
    check_batch(model, x)
    started = time.perf_counter()
    log_w, acceptance, steps = _chunked(
        model, x, start, schedule, schedule.temperatures(), seed, max_rows, log, "AIS"
    )
    log_px, stderr = _combine(log_w, schedule.num_chains)
    return AISResult(
        log_px=log_px,
        stderr=stderr,
        acceptance=acceptance,
        step_size=steps[-1],
        passes=schedule.passes_per_datapoint,
        seconds=time.perf_counter() - started,
        steps=steps,
    )


@torch.no_grad()
def _chunked(
    model: Model,
    x: torch.Tensor,
    start: Start,
    schedule: AISSchedule,
    betas: torch.Tensor,
    seed: int | None,
    max_rows: int | None,
    log: Callable[[str], None] | None,
    what: str,
    z: dict[str, torch.Tensor] | None = None,
    steps: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """`_run` over blocks of datapoints that fit ``max_rows``; log-weights ``(chains, N)``,
    acceptance ``(N,)`` and step sizes ``(T, N)``."""
    n, chains = x.shape[0], schedule.num_chains
    max_rows = model.rows_per_pass(max_rows)
    with frozen(model):
        start = _evaluation_start(start, x)
    context = frozen(start) if isinstance(start, Posterior) else contextlib.nullcontext()
    outputs: tuple[list[torch.Tensor], ...] = ([], [], [])
    with frozen(model), context, seeded(seed, x.device), pyro.validation_enabled(False):
        for part in _datapoint_parts(n, max(chains, schedule.pilot_chains), max_rows):
            datapoints = torch.arange(part.start, part.stop, device=x.device)
            fixed = None if steps is None else steps[:, part]
            log_w, acceptance, used = _run(
                model, x, start, betas, schedule, datapoints, z=z, steps=fixed
            )
            for output, value in zip(
                outputs, (log_w.view(chains, -1), acceptance, used), strict=True
            ):
                output.append(value)
            if log is not None:
                log(f"{what}: {part.stop}/{n} datapoints")
    return torch.cat(outputs[0], 1), torch.cat(outputs[1]), torch.cat(outputs[2], 1)


@dataclass
class BDMCResult:
    """Forward and reverse AIS on data simulated from the model.

    Attributes:
        lower: Forward AIS log p̂(x) per simulated datapoint (a stochastic lower bound).
        upper: Reverse AIS from the exact posterior sample (a stochastic upper bound).
        x: The simulated data.
        passes: Model evaluations per datapoint, both directions and all chains.
        seconds: Wall time.
    """

    lower: torch.Tensor
    upper: torch.Tensor
    x: torch.Tensor
    passes: int
    seconds: float

    @property
    def width(self) -> float:
        """Mean of upper - lower over the datapoints, in nats."""
        return (self.upper - self.lower).mean().item()

    def summary(self) -> dict[str, Any]:
        """JSON-ready means (nats), standard errors over datapoints, and the cost."""
        gap = self.upper - self.lower
        n = gap.numel()
        return {
            "num_datapoints": int(n),
            "lower": self.lower.mean().item(),
            "upper": self.upper.mean().item(),
            "width": gap.mean().item(),
            "width_stderr": (gap.std() / math.sqrt(n)).item() if n > 1 else None,
            "passes_per_datapoint": self.passes,
            "seconds": round(self.seconds, 1),
        }


def simulate(
    model: Model, num: int, *, seed: int = 0
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Draw ``z ~ p(z)`` and ``x ~ p(x | z)``.

    Each drawn ``z`` is an exact sample of its ``x``'s posterior, which BDMC's reverse
    chains start from.
    """
    if num < 1:
        raise LvmError(f"simulate needs at least one datapoint, got {num}")
    with torch.no_grad(), frozen(model), seeded(seed, model.device):
        z = model.sample_prior(num)
        x = model.decode(z).sample()
    return x, z


def bdmc(
    model: Model,
    schedule: AISSchedule | None = None,
    *,
    num_datapoints: int = 100,
    start: Callable[[torch.Tensor], Start] | str = PRIOR,
    seed: int = 0,
    max_rows: int | None = None,
    log: Callable[[str], None] | None = None,
) -> BDMCResult:
    """Bidirectional Monte Carlo: AIS forward and in reverse on simulated data.

    Args:
        model: The generative model.
        schedule: The AIS schedule whose tightness is measured.
        num_datapoints: How many datapoints to simulate.
        start: ``"prior"``, or a function from the simulated batch to the start posterior
            (e.g. the refined q* of those datapoints, as `gap_report` uses).
        seed: Seed of the simulation (the chains use ``seed + 1`` and ``seed + 2``).
        max_rows: See `ais_log_px`.
        log: Called with progress lines.

    Returns:
        A `BDMCResult`; ``upper - lower`` bounds the AIS estimate's slack on such data.
    """
    schedule = schedule or AISSchedule()
    started = time.perf_counter()
    x, z = simulate(model, num_datapoints, seed=seed)
    chosen = start if isinstance(start, str) else start(x)
    forward = ais_log_px(model, x, chosen, schedule, seed=seed + 1, max_rows=max_rows, log=log)
    # The reverse chains use the forward pilot's step sizes at the same temperatures (the
    # last reverse transition, at b = 0, changes no weight and borrows b_1's).
    steps = torch.cat([forward.steps[:-1].flip(0), forward.steps[:1]])
    log_w, _, _ = _chunked(
        model,
        x,
        chosen,
        schedule,
        schedule.temperatures().flip(0),
        seed + 2,
        max_rows,
        log,
        "BDMC reverse",
        z=z,
        steps=steps,
    )
    # Reverse weights estimate 1 / p(x): the bound is minus the log of their mean.
    log_inverse, _ = _combine(log_w, schedule.num_chains)
    return BDMCResult(
        lower=forward.log_px,
        upper=-log_inverse,
        x=x,
        passes=forward.passes + schedule.num_chains * schedule.passes_per_chain,
        seconds=time.perf_counter() - started,
    )


def schedule_protocol(schedule: AISSchedule) -> dict[str, Any]:
    """The schedule's fields and its description, JSON-ready."""
    return {**asdict(schedule), "description": schedule.describe()}
