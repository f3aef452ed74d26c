"""A small NVAE: hierarchical latent groups at two scales, sized to train on two CPU cores.

Generative model (top-down): a learned input tensor ``h`` at the coarsest scale; for each
latent group ``z_l`` (coarse to fine), decoder cells update the state ``s``, the prior
``p(z_l | z_<l) = N(mu_p(s), sigma_p(s))`` is read from it (``N(0, I)`` for the first
group), and ``z_l`` is merged back into ``s``; after the last group, decoder cells bring
``s`` to full resolution and give Bernoulli logits for the pixels.

Posterior (bidirectional encoder): a bottom-up pass of encoder cells gives one feature map
``e_l`` per group; the top-down pass is *the decoder's own* (same weights), and for each
group ``q(z_l | z_<l, x) = N(mu_p + dmu, sigma_p * exp(dlog_sigma))`` with the residual
``(dmu, dlog_sigma)`` computed from ``e_l`` and the state ``s`` (NVAE's residual normal
distribution). With ``num_flows > 0`` each group's sample is then pushed through inverse
autoregressive steps conditioned on ``e_l``.

Every group is its own Pyro sample site (``z1`` is the coarsest) inside the data plate.

Training (``lvm train --backend nvae``) minimises the NELBO with two of NVAE's aids, set in
the config: KL warm-up (the KL weight grows linearly from ``kl_min`` to 1 over the first
``kl_warmup`` fraction of the steps, with KL balancing between groups meanwhile) and
gradient-norm clipping.

References:
    Vahdat & Kautz, "NVAE: A Deep Hierarchical Variational Autoencoder", NeurIPS 2020;
    Sønderby et al., "Ladder Variational Autoencoders", NeurIPS 2016 (KL warm-up);
    Kingma et al., "Improved Variational Inference with Inverse Autoregressive Flow",
    NeurIPS 2016.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pyro
import pyro.distributions as dist
import torch
from torch import nn
from torch.distributions import kl_divergence

from lvm_nvae.cells import ResidualCell
from lvm_nvae.posterior import NVAEPosterior, posterior_dist
from lvmtoolkit import DATA_PLATE, AutoregressiveConvCell, CheckpointError, Model, installed_version

PARAM_BOUND = 5.0
"""Means and log-scales are soft-clamped to (-5, 5), as NVAE does, to keep training stable."""


def soft_clamp(value: torch.Tensor, bound: float = PARAM_BOUND) -> torch.Tensor:
    """``bound * tanh(value / bound)``: the identity near 0, smoothly bounded."""
    return bound * torch.tanh(value / bound)


@dataclass
class NVAEConfig:
    """Architecture and training aids of the NVAE.

    Attributes:
        image_shape: ``(channels, height, width)``; height and width divisible by
            ``2 ** len(groups_per_scale)``.
        channels: Feature channels at full resolution, then after each halving
            (``len(groups_per_scale) + 1`` values).
        groups_per_scale: Latent groups per scale, coarsest scale first; scales are the
            resolutions halved ``len(groups_per_scale)`` times down to once (28x28 input:
            7x7, then 14x14).
        latent_channels: Channels of every latent group.
        cells_per_group: Residual cells per group in the encoder and the decoder.
        preprocess_cells: Encoder cells at full resolution before the first halving.
        postprocess_cells: Decoder cells from the finest latent scale to full resolution
            (the first one upsamples).
        num_flows: Inverse autoregressive steps per group in the posterior (0: none).
        flow_hidden: Hidden channels of each flow step.
        kl_warmup: Fraction of the training steps over which the KL weight grows to 1.
        kl_min: KL weight at the first step.
        kl_balance: During warm-up, weigh groups by their KL per dimension, so no group is
            switched off early (NVAE's KL balancing).
        grad_clip: Clip the gradient's global norm to this in training (0: no clipping).
    """

    image_shape: tuple[int, ...] = (1, 28, 28)
    channels: tuple[int, ...] = (16, 32, 32)
    groups_per_scale: tuple[int, ...] = (2, 2)
    latent_channels: int = 8
    cells_per_group: int = 1
    preprocess_cells: int = 1
    postprocess_cells: int = 1
    num_flows: int = 0
    flow_hidden: int = 16
    kl_warmup: float = 0.3
    kl_min: float = 1e-3
    kl_balance: bool = True
    grad_clip: float = 200.0

    def __post_init__(self) -> None:
        self.image_shape = tuple(int(v) for v in self.image_shape)
        self.channels = tuple(int(v) for v in self.channels)
        self.groups_per_scale = tuple(int(v) for v in self.groups_per_scale)
        if len(self.image_shape) != 3 or min(self.image_shape) < 1:
            raise CheckpointError(f"image_shape must be (C, H, W), got {self.image_shape}")
        scales = len(self.groups_per_scale)
        if scales < 1 or min(self.groups_per_scale) < 1:
            raise CheckpointError("groups_per_scale needs at least one scale, each with a group")
        if len(self.channels) != scales + 1 or min(self.channels) < 1:
            raise CheckpointError(
                f"channels needs {scales + 1} positive widths (full resolution and after each "
                f"of {scales} halvings), got {self.channels}"
            )
        _, height, width = self.image_shape
        if height % 2**scales or width % 2**scales:
            raise CheckpointError(
                f"image height and width must be divisible by {2**scales} for {scales} scales"
            )
        counts = (self.latent_channels, self.cells_per_group, self.postprocess_cells)
        if min(counts) < 1 or self.flow_hidden < 1:
            raise CheckpointError(
                "latent_channels, cells_per_group, postprocess_cells and flow_hidden must be "
                "positive"
            )
        if self.preprocess_cells < 0 or self.num_flows < 0:
            raise CheckpointError("preprocess_cells and num_flows must be >= 0")
        if not 0 <= self.kl_warmup <= 1 or not 0 < self.kl_min <= 1 or self.grad_clip < 0:
            raise CheckpointError("need 0 <= kl_warmup <= 1, 0 < kl_min <= 1, grad_clip >= 0")


@dataclass(frozen=True)
class Group:
    """One latent group: its Pyro site name, its scale (halvings) and its event shape."""

    name: str
    level: int
    shape: tuple[int, int, int]


def _cells(channels_in: int, channels_out: int, count: int, upsample: bool = False) -> nn.Module:
    """``count`` residual cells; the first changes the channels (and upsamples if asked)."""
    cells = [
        ResidualCell(
            channels_in if i == 0 else channels_out,
            channels_out,
            "up" if upsample and i == 0 else "none",
        )
        for i in range(count)
    ]
    return nn.Sequential(*cells)


GroupSampler = Callable[[int, torch.Tensor], torch.Tensor]
"""``sampler(l, state)`` returns ``z_l`` given the top-down state before group ``l``."""


class NVAE(Model):
    """Hierarchical VAE with a bidirectional encoder and residual posterior (NVAE).

    Args:
        config: Architecture; the default is the "tiny" one that trains on 2 CPU cores.
    """

    name = "nvae"
    # A refinement step costs ~70x the VAE's (93.5 MFLOP forward per image): the VAE's
    # defaults (1,000 images per split, 1,000 steps) would run for hours on a CPU.
    refine_num_images = 100
    refine_steps = (1, 10, 100)
    version = installed_version("lvm-nvae")
    config_class = NVAEConfig

    def __init__(self, config: NVAEConfig | None = None):
        config = config or self.config_class()
        super().__init__(config)
        self.data_shape = config.image_shape
        image_channels, height, width = config.image_shape
        ch, cz = config.channels, config.latent_channels
        scales = len(config.groups_per_scale)
        levels = range(scales, 0, -1)  # coarsest first: 2 = 7x7, 1 = 14x14 for 28x28 input
        self.groups: list[Group] = []
        for level, count in zip(levels, config.groups_per_scale, strict=True):
            for _ in range(count):
                shape = (cz, height >> level, width >> level)
                self.groups.append(Group(f"z{len(self.groups) + 1}", level, shape))
        self.kl_weight = 1.0  # set by on_train_step during KL warm-up

        # Bottom-up encoder: full resolution, then per level (finest first) a halving cell
        # and the cells whose outputs feed that level's groups (last group first).
        self.stem = nn.Conv2d(image_channels, ch[0], 3, padding=1)
        self.preprocess = _cells(ch[0], ch[0], config.preprocess_cells)
        self.down = nn.ModuleList(
            ResidualCell(ch[i - 1], ch[i], "down") for i in range(1, scales + 1)
        )
        self.encoder_cells = nn.ModuleList(
            _cells(ch[g.level], ch[g.level], config.cells_per_group) for g in self.groups
        )

        # Top-down path, shared by the generative model and the encoder's top-down pass.
        top = self.groups[0]
        self.top = nn.Parameter(0.1 * torch.randn(1, ch[top.level], *top.shape[1:]))
        self.between = nn.ModuleList(
            _cells(
                ch[previous.level],
                ch[group.level],
                config.cells_per_group,
                upsample=group.level != previous.level,
            )
            for previous, group in zip(self.groups, self.groups[1:], strict=False)
        )
        self.prior_heads = nn.ModuleList(
            nn.Sequential(nn.ELU(), nn.Conv2d(ch[g.level], 2 * cz, 3, padding=1))
            for g in self.groups[1:]
        )
        self.merge = nn.ModuleList(nn.Conv2d(ch[g.level] + cz, ch[g.level], 1) for g in self.groups)
        finest = self.groups[-1].level
        self.postprocess = nn.Sequential(
            *(ResidualCell(ch[level], ch[level - 1], "up") for level in range(finest, 0, -1)),
            _cells(ch[0], ch[0], config.postprocess_cells - 1),
        )
        self.output = nn.Sequential(nn.ELU(), nn.Conv2d(ch[0], image_channels, 3, padding=1))

        # Posterior heads: the encoder feature (plus, below the top, the top-down state)
        # gives the residual (dmu, dlog_sigma) of each group.
        self.state_to_encoder = nn.ModuleList(
            nn.Conv2d(ch[g.level], ch[g.level], 1) for g in self.groups[1:]
        )
        self.posterior_heads = nn.ModuleList(
            nn.Sequential(nn.ELU(), nn.Conv2d(ch[g.level], 2 * cz, 3, padding=1))
            for g in self.groups
        )
        self.flows = nn.ModuleList(
            nn.ModuleList(
                AutoregressiveConvCell(
                    g.shape,
                    config.flow_hidden,
                    context_channels=ch[g.level],
                    reverse=k % 2 == 1,
                )
                for k in range(config.num_flows)
            )
            for g in self.groups
        )
        # Convolutions run 15-20% faster on CPU with channels-last weights (oneDNN's native
        # layout: no reorder around each one; measured on the bundled NVAE's evaluation).
        self.to(memory_format=torch.channels_last)

    # --- shapes ----------------------------------------------------------------------------

    @property
    def latent_shapes(self) -> dict[str, tuple[int, ...]]:
        return {g.name: g.shape for g in self.groups}

    @property
    def has_flows(self) -> bool:
        """Whether the posterior has flow steps of its own."""
        return self.config.num_flows > 0

    # --- the two passes ----------------------------------------------------------------------

    def encode(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Bottom-up encoder features, one per group, in top-down (group) order."""
        h = self.preprocess(self.stem(2.0 * x - 1.0))
        features: list[torch.Tensor] = [None] * len(self.groups)  # type: ignore[list-item]
        for level in range(1, len(self.down) + 1):
            h = self.down[level - 1](h)
            # Groups of this level, the last (finest in the top-down order) first.
            for index in reversed(range(len(self.groups))):
                if self.groups[index].level == level:
                    h = self.encoder_cells[index](h)
                    features[index] = h
        return features

    def top_down(self, num: int, sampler: GroupSampler) -> torch.Tensor:
        """Run the top-down path, asking ``sampler`` for each group's ``z``; the final state."""
        state = self.top.expand(num, -1, -1, -1)
        for index, _ in enumerate(self.groups):
            if index > 0:
                state = self.between[index - 1](state)
            z = sampler(index, state)
            state = self.merge[index](torch.cat([state, z], dim=1))
        return state

    def prior_params(self, index: int, state: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(mu_p, log_sigma_p)`` of group ``index`` given the top-down state before it."""
        if index == 0:
            zeros = state.new_zeros(state.shape[0], *self.groups[0].shape)
            return zeros, zeros
        mu, log_sigma = self.prior_heads[index - 1](state).chunk(2, dim=1)
        return soft_clamp(mu), soft_clamp(log_sigma)

    def residual_params(
        self, index: int, feature: torch.Tensor, state: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The encoder's residual ``(dmu, dlog_sigma)`` of group ``index`` (relative to p)."""
        if index > 0:
            feature = feature + self.state_to_encoder[index - 1](state)
        dmu, dlog_sigma = self.posterior_heads[index](feature).chunk(2, dim=1)
        return soft_clamp(dmu), soft_clamp(dlog_sigma)

    def prior_dist(self, index: int, state: torch.Tensor) -> dist.TorchDistribution:
        """p(z_l | z_<l) as a distribution with batch shape (N,) and event shape of z_l."""
        mu, log_sigma = self.prior_params(index, state)
        return dist.Normal(mu, log_sigma.exp(), validate_args=False).to_event(3)

    def logits(self, state: torch.Tensor) -> torch.Tensor:
        """Bernoulli logits of the pixels from the final top-down state."""
        return self.output(self.postprocess(state))

    # --- Model interface -----------------------------------------------------------------

    def model(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> None:
        n = x.shape[0]
        with pyro.plate(DATA_PLATE, n):
            state = self.top_down(
                n, lambda i, s: pyro.sample(self.groups[i].name, self.prior_dist(i, s))
            )
            likelihood = self._likelihood(state)
            if mask is not None:
                likelihood = likelihood.base_dist.mask(mask.bool()).to_event(3)
            pyro.sample("x", likelihood, obs=x)

    def _likelihood(self, state: torch.Tensor) -> dist.TorchDistribution:
        return dist.Bernoulli(logits=self.logits(state), validate_args=False).to_event(3)

    def decode(self, z: dict[str, torch.Tensor]) -> dist.TorchDistribution:
        n = z[self.groups[0].name].shape[0]
        return self._likelihood(self.top_down(n, lambda i, s: z[self.groups[i].name]))

    def sample_prior(self, num_samples: int) -> dict[str, torch.Tensor]:
        drawn: dict[str, torch.Tensor] = {}

        def sampler(index: int, state: torch.Tensor) -> torch.Tensor:
            drawn[self.groups[index].name] = self.prior_dist(index, state).sample()
            return drawn[self.groups[index].name]

        self.top_down(num_samples, sampler)
        return drawn

    def amortized_posterior(self) -> NVAEPosterior:
        return NVAEPosterior(self)

    # --- training ------------------------------------------------------------------------

    def training_loss(self, x: torch.Tensor) -> torch.Tensor:
        """Per-datapoint NELBO with the KL weighted for warm-up, in one pass.

        Guide and model share the top-down path, so it runs once here, where the Pyro
        model and guide each run it. With ``kl_weight == 1`` this is the one-sample NELBO
        of `per_datapoint_elbo` (same noise, same value): the
        closed-form KL of each group, or with flows the low-variance estimate registered
        for `GaussianFlow`.
        """
        features = self.encode(x)
        kls: list[torch.Tensor] = []

        def sampler(index: int, state: torch.Tensor) -> torch.Tensor:
            q = posterior_dist(self, index, features[index], state)
            z = q.rsample()
            kls.append(kl_divergence(q, self.prior_dist(index, state)))
            return z

        state = self.top_down(x.shape[0], sampler)
        log_likelihood = self._likelihood(state).log_prob(x)
        return -log_likelihood + self._weighted_kl(torch.stack(kls, dim=1))

    def _weighted_kl(self, kls: torch.Tensor) -> torch.Tensor:
        """Sum the ``(N, groups)`` KLs with the warm-up weight and, meanwhile, balancing."""
        if self.kl_weight >= 1.0:
            return kls.sum(1)
        if not self.config.kl_balance:
            return self.kl_weight * kls.sum(1)
        # Groups with much KL per dimension are pushed harder than groups with little, so
        # no group collapses to the prior while the KL weight is small.
        sizes = kls.new_tensor([math.prod(g.shape) for g in self.groups])
        per_dim = kls.detach().abs().mean(0) / sizes + 1e-6
        coefficients = per_dim / per_dim.mean()
        return self.kl_weight * (kls * coefficients).sum(1)

    def on_train_step(self, step: int, total_steps: int) -> None:
        """KL warm-up: the weight grows linearly to 1 over ``kl_warmup`` of the steps."""
        warmup = self.config.kl_warmup * total_steps
        progress = (step + 1) / warmup if warmup > 0 else 1.0
        self.kl_weight = min(1.0, max(self.config.kl_min, progress))

    def on_before_optimizer_step(self) -> None:
        """Clip the gradient's global norm; skip the update if it is not finite."""
        if self.config.grad_clip <= 0:
            return
        params = [p for p in self.parameters() if p.grad is not None]
        norm = torch.nn.utils.clip_grad_norm_(params, self.config.grad_clip)
        if not torch.isfinite(norm):
            for p in params:
                p.grad.zero_()

    @classmethod
    def default_checkpoint(cls) -> Path | None:
        path = Path(__file__).parent / "checkpoints" / "nvae-mnist-5k"
        return path if path.is_dir() else None


@dataclass
class NVAEFlowConfig(NVAEConfig):
    """The NVAE's config with two inverse autoregressive steps per group by default."""

    num_flows: int = 2


class NVAEFlow(NVAE):
    """The NVAE with normalizing flows in its posterior (``num_flows`` IAF steps per group)."""

    name = "nvae-flow"
    config_class = NVAEFlowConfig

    @classmethod
    def default_checkpoint(cls) -> Path | None:
        path = Path(__file__).parent / "checkpoints" / "nvae-flow-mnist-5k"
        return path if path.is_dir() else None
