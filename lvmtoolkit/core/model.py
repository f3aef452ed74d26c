"""The generative side: a Model is a Pyro model plus what refiners and tasks need from it."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import nn
from torch.distributions import Distribution

from lvmtoolkit.core.direct_elbo import mean_field_elbo
from lvmtoolkit.core.elbo import per_datapoint_elbo
from lvmtoolkit.core.posterior import Posterior
from lvmtoolkit.core.runtime import replaces
from lvmtoolkit.errors import CheckpointError, LvmError


class Model(nn.Module):
    """Base class of backends: a latent variable model written in Pyro.

    A backend subclasses this, sets the class attributes, and implements `model`,
    `decode`, `sample_prior` and `amortized_posterior`. It registers the
    class through the ``register_backends`` hook; checkpoints rebuild it from
    ``config_class`` and the saved weights, so loading never runs pickled code.

    Attributes:
        name: Registry key, e.g. ``"vae"``.
        version: Version written into checkpoints.
        config_class: A dataclass holding every architecture setting.
        data_shape: Shape of one datapoint, e.g. ``(1, 28, 28)``.
        binary_data: True when the likelihood is over binary pixels, so evaluation
            binarises images with the fixed seed; False to evaluate on grey levels.
        refine_num_images: ``lvm refine``'s default ``--num-images`` for this backend.
        refine_steps: ``lvm refine``'s default ``--steps`` for this backend.
    """

    name: ClassVar[str] = ""
    binary_data: ClassVar[bool] = True
    refine_num_images: ClassVar[int] = 1000
    """Images per split of ``lvm refine`` when ``--num-images`` is not given."""
    refine_steps: ClassVar[tuple[int, ...]] = (1, 10, 100, 1000)
    """Step counts of ``lvm refine`` when ``--steps`` is not given. A backend whose steps
    cost far more than the paper's VAE's declares smaller defaults, so that the command
    as typed finishes in minutes on a CPU (the user asks for more explicitly)."""
    chunk_size: ClassVar[int] = 1024
    """Datapoint-samples per forward pass where the caller does not choose (``svi``'s steps
    and keep-best scoring, `nelbo`). Memory grows with it. A backend sets the size its passes
    run fastest at: the MLP VAEs set 2048 (12% faster svi steps and 13% faster evaluation than
    1024 on 2 CPU threads, a few MB more); the NVAE keeps 1024 (2048 was slower and took
    0.5 GB more in evaluation)."""
    version: ClassVar[str] = "0"
    config_class: ClassVar[type] = object
    data_shape: tuple[int, ...] = ()

    def __init__(self, config: Any):
        super().__init__()
        self.config = config

    # --- what every backend implements -------------------------------------------------

    def model(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> None:
        """Pyro model: latent sites and the observed site ``"x"`` in ``pyro.plate("data")``.

        Args:
            x: Batch of shape ``(N, *data_shape)`` with values in [0, 1].
            mask: Optional boolean tensor broadcastable to ``x``; False marks pixels that
                are not observed (they do not enter the likelihood).
        """
        raise NotImplementedError

    def decode(self, z: dict[str, torch.Tensor]) -> Distribution:
        """The likelihood p(x | z): batch shape ``(N,)``, event shape ``data_shape``."""
        raise NotImplementedError

    def sample_prior(self, num_samples: int) -> dict[str, torch.Tensor]:
        """Draw ``num_samples`` latents from the prior, ``{site: tensor}``."""
        raise NotImplementedError

    def amortized_posterior(self) -> Posterior:
        """The encoder's posterior q(z | x) (shares this model's encoder parameters)."""
        raise NotImplementedError

    @property
    def latent_shapes(self) -> dict[str, tuple[int, ...]]:
        """Event shape of each latent site, ``{site: shape}``."""
        raise NotImplementedError

    # --- optional ---------------------------------------------------------------------------

    def latent_prior(self, num: int, like: torch.Tensor) -> dict[str, Distribution] | None:
        """The prior of every latent site for ``num`` datapoints, for a flat model; else None.

        A model is flat when `model` draws each latent site from a prior that depends on no
        other site, inside the data plate and in this dict's order, and then observes x from
        `decode` of those latents, leaving out pixels where the mask is False. Such a model
        may return those priors here (batch shape ``(num,)``); refiners and estimators then
        compute its ELBO directly (`lvmtoolkit.core.direct_elbo`), with the same result as
        Pyro's traces and less time per step. `lvmtoolkit.testing.check_model` checks the
        two against each other. The default, None, always uses Pyro's traces; hierarchical
        models (the NVAE) and models written directly in Pyro keep it.

        Args:
            num: N, the datapoints of the batch.
            like: A tensor on the batch's device and dtype.
        """
        return None

    def overrides(self, base: type, *names: str) -> bool:
        """Whether this model's class replaces any of ``base``'s methods ``names``.

        A backend whose `latent_prior` holds for its own `model` and `decode` returns None
        when a subclass replaces them: the subclass's model may no longer be flat.
        """
        return replaces(self, base, *names)

    # --- provided -------------------------------------------------------------------------

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> None:
        return self.model(x, mask)

    def evaluation_data(self, images: torch.Tensor) -> torch.Tensor:
        """Images as every evaluation sees them: binarised with the fixed seed when the
        likelihood is over binary pixels (``binary_data``), else unchanged."""
        from lvmtoolkit.data.base import binarize_fixed

        return binarize_fixed(images) if self.binary_data else images

    def training_loss(self, x: torch.Tensor) -> torch.Tensor:
        """Per-datapoint NELBO under the amortized posterior; training minimises its mean."""
        return -model_elbo(self, self.amortized_posterior(), x)

    def on_train_step(self, step: int, total_steps: int) -> None:
        """Called by `train` before each step's loss.

        Does nothing by default; override for schedules over training, e.g. KL warm-up.

        Args:
            step: Index of the coming gradient step, from 0.
            total_steps: Gradient steps in the whole run.
        """

    def on_before_optimizer_step(self) -> None:
        """Called by `train` after the backward pass.

        Runs before the optimiser's update; does nothing by default. Override to clip or
        check gradients.
        """

    def rows_per_pass(self, requested: int | None, name: str = "max_rows") -> int:
        """Rows one forward pass may take: ``requested``, or `chunk_size` where it is None.

        Every estimator that folds samples into passes (`nelbo`, the IWAE bound, the
        conditional NLL, the restoration samplers) resolves its size here, so they all
        follow the backend's setting and refuse a size below 1 the same way.

        Args:
            requested: The caller's bound, or None for the backend's own.
            name: The argument's name, for the error message.

        Raises:
            LvmError: ``requested`` is below 1.
        """
        if requested is None:
            requested, name = self.chunk_size, f"{type(self).__name__}.chunk_size"
        if requested < 1:
            raise LvmError(f"{name} must be positive, got {requested}")
        return int(requested)

    @property
    def device(self) -> torch.device:
        for tensor in self.parameters():
            return tensor.device
        return torch.device("cpu")

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> Model:
        """Build the model from a config dict (as saved in a checkpoint)."""
        return cls(config_from_dict(cls.config_class, config))

    @classmethod
    def default_checkpoint(cls) -> Path | None:
        """Path of the pretrained checkpoint shipped with the backend, if any."""
        return None


def config_from_dict(config_class: type, values: dict[str, Any]) -> Any:
    """Build a config dataclass from a dict, rejecting unknown or mistyped keys."""
    if not isinstance(values, dict):
        raise CheckpointError(f"config must be a JSON object, got {type(values).__name__}")
    fields = {f.name: f for f in dataclasses.fields(config_class)}
    unknown = sorted(set(values) - set(fields))
    if unknown:
        raise CheckpointError(
            f"unknown {config_class.__name__} keys: {', '.join(unknown)} "
            f"(known: {', '.join(fields)})"
        )
    try:
        return config_class(**values)
    except (TypeError, ValueError) as err:
        raise CheckpointError(f"invalid {config_class.__name__}: {err}") from None


def direct_elbo(
    model: Model,
    posterior: Posterior,
    x: torch.Tensor,
    mask: torch.Tensor | None = None,
    **estimator: bool,
) -> torch.Tensor | None:
    """The one-sample ELBO of each datapoint without Pyro's traces, or None where it cannot.

    It can when ``model.latent_prior`` gives a prior for every latent site and
    ``posterior.mean_field(x)`` gives q for the same sites. Arguments (``analytic_kl``,
    ``stl`` as keywords) and result are those of `model_elbo`; the estimator is
    `per_datapoint_elbo`'s (same value for the same draws).

    Returns:
        Tensor of shape ``(N,)``, or None (nothing was drawn: the caller's noise is intact).
    """
    prior = model.latent_prior(x.shape[0], x)
    if prior is None:
        return None
    q = posterior.mean_field(x)
    if q is None or set(q) != set(prior):
        return None
    return mean_field_elbo(prior, q, model.decode, x, mask, **estimator)


def model_elbo(
    model: Model,
    posterior: Posterior,
    x: torch.Tensor,
    mask: torch.Tensor | None = None,
    *,
    analytic_kl: bool = True,
    stl: bool = False,
) -> torch.Tensor:
    """One-sample ELBO of each datapoint of a Model under a Posterior.

    `direct_elbo` where the model and the posterior allow it, else `per_datapoint_elbo` on
    ``model.model`` and the posterior's guide. The two agree: the choice changes the time a
    step takes, not its result.

    Args:
        model: The model.
        posterior: A posterior of ``len(x)`` datapoints (or an amortized one).
        x: The batch.
        mask: Optional observed-pixel mask.
        analytic_kl: Closed-form KL where the pair has one.
        stl: Sticking the landing (needs ``analytic_kl=False``).

    Returns:
        Tensor of shape ``(N,)`` (differentiable).
    """
    if stl and analytic_kl:
        raise LvmError("stl applies to the Monte-Carlo KL: pass analytic_kl=False with stl=True")
    direct = direct_elbo(model, posterior, x, mask, analytic_kl=analytic_kl, stl=stl)
    if direct is not None:
        return direct
    return per_datapoint_elbo(
        model.model, posterior, x, mask=mask, analytic_kl=analytic_kl, stl=stl
    )
