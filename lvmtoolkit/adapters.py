"""Adapters: any pretrained VAE as a `Model`.

Two ways in, both giving a model that every refiner and task accepts:

- `TorchVAE` wraps a plain PyTorch encoder and decoder (any ``nn.Module``, any
  latent shape) with a N(0, I) prior and a Bernoulli or Gaussian likelihood.
- `PyroVAE` wraps a Pyro model and guide that you already have; it renames their
  data plate and observed site to the toolkit's conventions and masks pixels for
  inpainting, so the model's code does not change.

To make either a backend (``lvm refine --backend NAME``, checkpoints rebuilt by name),
subclass it with a ``name``, a ``config_class`` dataclass and an ``__init__(config)`` that
builds the networks, and register the subclass through the ``register_backends`` hook.

Example:
    ```python
    import lvmtoolkit as lvm

    model = lvm.TorchVAE(my_encoder, my_decoder, data_shape=(1, 28, 28), latent_shape=(16,))
    result = lvm.get_refiner("svi")(steps=100).refine(model, x)
    ```
"""

from __future__ import annotations

import contextlib
import inspect
import math
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import pyro
import pyro.distributions as dist
import torch
from pyro import poutine
from pyro.poutine.messenger import Messenger
from pyro.poutine.util import site_is_subsample
from torch import distributions as td
from torch import nn

from lvmtoolkit.core.elbo import DATA_PLATE
from lvmtoolkit.core.likelihood import peel_independent
from lvmtoolkit.core.model import Model
from lvmtoolkit.core.posterior import AmortizedGaussianPosterior, GaussianParams, GaussianPosterior
from lvmtoolkit.core.runtime import eval_mode
from lvmtoolkit.errors import LvmError

__all__ = [
    "ENCODER_SCALES",
    "LIKELIHOODS",
    "AdapterError",
    "AdapterWarning",
    "PyroVAE",
    "PyroVAEConfig",
    "TorchVAE",
    "TorchVAEConfig",
]

LIKELIHOODS = ("bernoulli", "bernoulli-probs", "gaussian")
"""Likelihoods `TorchVAE` builds from the decoder's output:

- ``"bernoulli"``: the decoder returns logits.
- ``"bernoulli-probs"``: the decoder returns probabilities (ends in a sigmoid).
- ``"gaussian"``: the decoder returns the mean, or a ``(mean, scale)`` pair; with the mean
  alone, ``obs_scale`` is the standard deviation of every pixel.
"""

ENCODER_SCALES = ("logvar", "log_scale", "scale")
"""How `TorchVAE` reads the second half of the encoder's output: log-variance (as in
most PyTorch VAE code), log standard deviation, or standard deviation."""

# The local posterior that refiners optimise stores log(scale): a scale that underflows to
# 0 would start it at -inf.
_MIN_SCALE = 1e-8
# Probabilities are turned into logits clamped this far from 0 and 1, so a pixel the
# decoder is certain about cannot give an infinite log-likelihood (and NaN gradients).
_PROB_EPS = 1e-6


class AdapterError(LvmError):
    """An adapter that is set up wrongly, or networks whose outputs do not fit it."""


class AdapterWarning(UserWarning):
    """Networks whose outputs look unlike what the adapter was told they are."""


def _shape(value: Sequence[int], what: str) -> tuple[int, ...]:
    try:
        shape = tuple(int(v) for v in value)
    except (TypeError, ValueError):
        raise AdapterError(f"{what} must be a tuple of positive integers, got {value!r}") from None
    if not shape or min(shape) < 1:
        raise AdapterError(f"{what} must be a non-empty tuple of positive integers, got {shape}")
    return shape


def _probe(network: Callable[..., Any], value: torch.Tensor) -> Any:
    """``network(value)`` in eval mode without gradients, or None if it cannot run."""
    is_module = isinstance(network, nn.Module)
    device = next((p.device for p in network.parameters()), value.device) if is_module else None
    # eval_mode gives each submodule its own mode back (a user's network may mix them).
    mode = eval_mode(network) if is_module else contextlib.nullcontext()
    try:
        with mode, torch.no_grad():
            return network(value.to(device) if device is not None else value)
    except Exception:
        return None


def _check_scale(raw: Any) -> None:
    if isinstance(raw, torch.Tensor) and raw.numel() and bool((raw < 0).any()):
        raise AdapterError(
            "encoder_scale='scale' but the encoder gives negative scales; if it returns a "
            "log-variance pass encoder_scale='logvar' (a log standard deviation: 'log_scale')"
        )


# --- plain PyTorch encoder and decoder ---------------------------------------------------


@dataclass
class TorchVAEConfig:
    """What a `TorchVAE` was built with (written into checkpoints).

    Attributes:
        data_shape: Shape of one datapoint, e.g. ``(1, 28, 28)``.
        latent_shape: Shape of one latent, e.g. ``(16,)`` or ``(4, 7, 7)``.
        likelihood: One of `LIKELIHOODS`, or the name of a custom likelihood function.
        encoder_scale: One of `ENCODER_SCALES`.
        obs_scale: Pixel standard deviation of the Gaussian likelihood (None: from the
            decoder).
    """

    data_shape: tuple[int, ...] = (1, 28, 28)
    latent_shape: tuple[int, ...] = (10,)
    likelihood: str = "bernoulli"
    encoder_scale: str = "logvar"
    obs_scale: float | None = None


class TorchVAE(Model):
    """A VAE from a PyTorch encoder and decoder: N(0, I) prior, diagonal Gaussian posterior.

    The encoder maps a batch ``x`` of shape ``(N, *data_shape)`` to one of:

    - a pair ``(loc, s)``, where ``s`` is read as given by ``encoder_scale``;
    - one tensor whose dimension 1 holds ``loc`` and ``s`` stacked (split in two halves);
    - a ``torch.distributions.Normal`` (optionally wrapped in ``Independent``).

    ``loc`` and the scale may be flat: they are reshaped to ``(N, *latent_shape)``. The
    decoder maps ``z`` of shape ``(N, *latent_shape)`` to the likelihood's parameters (see
    `LIKELIHOODS`), flat or image-shaped. If your encoder expects flat input, wrap it:
    ``nn.Sequential(nn.Flatten(), encoder)``.

    Args:
        encoder: The inference network.
        decoder: The generative network.
        data_shape: Shape of one datapoint.
        latent_shape: Shape of one latent.
        likelihood: A name from `LIKELIHOODS`, or a function mapping the decoder's
            output to a ``torch.distributions.Distribution`` over the pixels (batch shape
            ``(N, *data_shape)``, or wrapped in ``Independent``).
        encoder_scale: A name from `ENCODER_SCALES`.
        obs_scale: Pixel standard deviation for ``likelihood="gaussian"`` when the decoder
            returns only the mean.
        binary_data: Whether the model is evaluated on binarised images (``lvm refine``
            binarises with a fixed seed). Default: True for the Bernoulli likelihoods.
        config: The config to record in checkpoints; subclasses registered as backends pass
            their own dataclass. Default: a `TorchVAEConfig` of the arguments.

    Raises:
        AdapterError: Shapes that are not tuples of positive integers, an unknown likelihood
            or encoder scale, a Gaussian likelihood without a scale.
    """

    name = "torch-vae"
    version = "0"
    config_class = TorchVAEConfig

    def __init__(
        self,
        encoder: nn.Module,
        decoder: nn.Module,
        *,
        data_shape: Sequence[int],
        latent_shape: Sequence[int],
        likelihood: str | Callable[[Any], td.Distribution] = "bernoulli",
        encoder_scale: str = "logvar",
        obs_scale: float | None = None,
        binary_data: bool | None = None,
        config: Any = None,
    ):
        data_shape = _shape(data_shape, "data_shape")
        latent_shape = _shape(latent_shape, "latent_shape")
        if isinstance(likelihood, str):
            if likelihood not in LIKELIHOODS:
                raise AdapterError(
                    f"unknown likelihood {likelihood!r}; use one of {', '.join(LIKELIHOODS)} "
                    "or a function from the decoder's output to a torch Distribution"
                )
            likelihood_name = likelihood
        elif callable(likelihood):
            likelihood_name = getattr(likelihood, "__name__", type(likelihood).__name__)
        else:
            raise AdapterError(f"likelihood must be a name or a function, got {likelihood!r}")
        if encoder_scale not in ENCODER_SCALES:
            raise AdapterError(
                f"unknown encoder_scale {encoder_scale!r}; use one of {', '.join(ENCODER_SCALES)}"
            )
        if obs_scale is not None and not (math.isfinite(obs_scale) and obs_scale > 0):
            raise AdapterError(f"obs_scale must be a positive number, got {obs_scale!r}")
        if config is None:
            config = TorchVAEConfig(
                data_shape, latent_shape, likelihood_name, encoder_scale, obs_scale
            )
        super().__init__(config)
        self.encoder = encoder
        self.decoder = decoder
        self.data_shape = data_shape
        self.latent_shape = latent_shape
        self.likelihood = likelihood
        self.encoder_scale = encoder_scale
        self.obs_scale = obs_scale
        self.binary_data = (
            likelihood in ("bernoulli", "bernoulli-probs") if binary_data is None else binary_data
        )
        self._check_networks()

    def _check_networks(self) -> None:
        """Cheap checks, when wrapping, that the networks give what was declared.

        A decoder that ends in a sigmoid declared as giving logits (``"bernoulli"``) is
        warned about (every output in [0, 1] is unlikely for logits); probabilities
        outside [0, 1] and negative scales are errors. The networks run on a few fixed
        inputs, in eval mode, without touching the global RNG; networks that cannot run
        on them are left to the first real call, which reports its own error.
        """
        generator = torch.Generator().manual_seed(0)
        z = torch.randn(8, *self.latent_shape, generator=generator)
        x = torch.rand(2, *self.data_shape, generator=generator)
        out = _probe(self.decoder, z)
        if isinstance(out, torch.Tensor) and out.numel() and out.is_floating_point():
            low, high = float(out.min()), float(out.max())
            if self.likelihood == "bernoulli" and low >= 0.0 and high <= 1.0:
                warnings.warn(
                    "every output of the decoder on prior samples is in [0, 1], as if it "
                    "ended in a sigmoid, but likelihood='bernoulli' reads them as logits; "
                    "for probabilities pass likelihood='bernoulli-probs'",
                    AdapterWarning,
                    stacklevel=3,
                )
            if self.likelihood == "bernoulli-probs" and (low < 0.0 or high > 1.0):
                raise AdapterError(
                    f"likelihood='bernoulli-probs' needs probabilities, but the decoder gives "
                    f"values in [{low:.3g}, {high:.3g}]; for logits pass likelihood='bernoulli'"
                )
        if self.encoder_scale == "scale":
            encoded = _probe(self.encoder, x)
            if isinstance(encoded, torch.Tensor) and encoded.dim() >= 2:
                encoded = encoded.chunk(2, dim=1) if encoded.shape[1] % 2 == 0 else None
            if isinstance(encoded, (tuple, list)) and len(encoded) == 2:
                _check_scale(encoded[1])

    @property
    def latent_shapes(self) -> dict[str, tuple[int, ...]]:
        return {"z": self.latent_shape}

    # --- encoder side -------------------------------------------------------------------

    def encode(self, x: torch.Tensor) -> GaussianParams:
        """The encoder's posterior parameters ``{"z": (loc, scale)}``, latent-shaped."""
        out = self.encoder(x)
        n = x.shape[0]
        if isinstance(out, td.Independent):
            out = out.base_dist
        if isinstance(out, td.Normal):
            loc, scale = out.loc, out.scale
        else:
            if isinstance(out, torch.Tensor):
                if out.dim() < 2 or out.shape[1] % 2:
                    raise AdapterError(
                        f"the encoder returned one tensor of shape {tuple(out.shape)}; a single "
                        "tensor must hold loc and scale stacked along dimension 1 (even size)"
                    )
                out = out.chunk(2, dim=1)
            if not (isinstance(out, (tuple, list)) and len(out) == 2):
                raise AdapterError(
                    "the encoder must return (loc, scale), one tensor holding both, or a "
                    f"Normal distribution; it returned {type(out).__name__}"
                )
            loc, raw = out
            if self.encoder_scale == "logvar":
                scale = (0.5 * raw).exp()
            elif self.encoder_scale == "log_scale":
                scale = raw.exp()
            else:
                _check_scale(raw)
                scale = raw
        loc = self._latent(loc, n, "loc")
        scale = self._latent(scale, n, "scale").clamp_min(_MIN_SCALE)
        return {"z": (loc, scale)}

    def _latent(self, value: torch.Tensor, n: int, what: str) -> torch.Tensor:
        expected = math.prod(self.latent_shape)
        if value.shape[0] != n or value[0].numel() != expected:
            raise AdapterError(
                f"the encoder's {what} has shape {tuple(value.shape)}; expected {n} rows of "
                f"{expected} values (latent_shape {self.latent_shape})"
            )
        return value.reshape(n, *self.latent_shape)

    def amortized_posterior(self) -> AmortizedGaussianPosterior:
        return AmortizedGaussianPosterior(self.encode)

    # --- generative side ----------------------------------------------------------------

    def prior(self, num: int, like: torch.Tensor) -> dist.TorchDistribution:
        """p(z): N(0, I) over ``latent_shape``; override for another prior."""
        zeros = like.new_zeros(num, *self.latent_shape)
        return dist.Normal(zeros, 1.0 + zeros, validate_args=False).to_event(len(self.latent_shape))

    def pixel_likelihood(self, out: Any, n: int) -> td.Distribution:
        """The likelihood of each pixel (batch shape ``(n, *data_shape)``) from the decoder."""
        if callable(self.likelihood) and not isinstance(self.likelihood, str):
            pixels = self.likelihood(out)
            if not isinstance(pixels, td.Distribution):
                raise AdapterError(
                    f"the likelihood function returned {type(pixels).__name__}, not a "
                    "torch.distributions.Distribution"
                )
            pixels, _ = peel_independent(pixels)
            if tuple(pixels.batch_shape) != (n, *self.data_shape) or pixels.event_shape:
                raise AdapterError(
                    "the likelihood function must give one distribution per pixel: batch "
                    f"shape {(n, *self.data_shape)}, got batch {tuple(pixels.batch_shape)} "
                    f"and event {tuple(pixels.event_shape)}"
                )
            return pixels
        if self.likelihood == "gaussian":
            if isinstance(out, (tuple, list)):
                mean, scale = out
            elif self.obs_scale is None:
                raise AdapterError(
                    "likelihood='gaussian' needs obs_scale=..., or a decoder that returns "
                    "(mean, scale)"
                )
            else:
                mean, scale = out, self.obs_scale
            mean = self._pixels(mean, n, "mean")
            if isinstance(scale, torch.Tensor):
                scale = self._pixels(scale, n, "scale").clamp_min(_MIN_SCALE)
            else:
                scale = torch.full_like(mean, scale)
            return dist.Normal(mean, scale, validate_args=False)
        out = self._pixels(out, n, "output")
        if self.likelihood == "bernoulli-probs":
            out = torch.logit(out, eps=_PROB_EPS)
        return dist.Bernoulli(logits=out, validate_args=False)

    def _pixels(self, value: torch.Tensor, n: int, what: str) -> torch.Tensor:
        expected = math.prod(self.data_shape)
        if (
            not isinstance(value, torch.Tensor)
            or value.shape[0] != n
            or value[0].numel() != (expected)
        ):
            shape = tuple(value.shape) if isinstance(value, torch.Tensor) else type(value).__name__
            raise AdapterError(
                f"the decoder's {what} has shape {shape}; expected {n} rows of {expected} "
                f"values (data_shape {self.data_shape})"
            )
        return value.reshape(n, *self.data_shape)

    def decode(self, z: dict[str, torch.Tensor]) -> td.Distribution:
        latent = z["z"]
        pixels = self.pixel_likelihood(self.decoder(latent), latent.shape[0])
        return dist.Independent(pixels, len(self.data_shape))

    def latent_prior(
        self, num: int, like: torch.Tensor
    ) -> dict[str, dist.TorchDistribution] | None:
        # `model` scores pixel_likelihood directly; a subclass's own decode or model may
        # not match it.
        if self.overrides(TorchVAE, "model", "decode"):
            return None
        return {"z": self.prior(num, like)}  # flat: `model` draws z from it, then x

    def model(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> None:
        n = x.shape[0]
        with pyro.plate(DATA_PLATE, n):
            z = pyro.sample("z", self.prior(n, x))
            pixels = self.pixel_likelihood(self.decoder(z), n)
            if mask is not None:
                pixels = dist.MaskedDistribution(pixels, mask.bool())
            pyro.sample("x", dist.Independent(pixels, len(self.data_shape)), obs=x)

    def sample_prior(self, num_samples: int) -> dict[str, torch.Tensor]:
        like = torch.zeros((), device=self.device)
        return {"z": self.prior(num_samples, like).sample()}


# --- a Pyro model and guide --------------------------------------------------------------


@dataclass
class PyroVAEConfig:
    """What a `PyroVAE` was built with (written into checkpoints).

    Attributes:
        data_shape: Shape of one datapoint.
        obs_site: Name of the observed site in the wrapped model.
        data_plate: Name of the wrapped model's plate over datapoints.
    """

    data_shape: tuple[int, ...] = (1, 28, 28)
    obs_site: str = "x"
    data_plate: str = DATA_PLATE


def _accepts_mask(fn: Callable[..., Any]) -> bool:
    # A module's own signature is (*args, **kwargs); its forward says what it takes.
    target = fn.forward if isinstance(fn, nn.Module) else fn
    try:
        params = inspect.signature(target).parameters.values()
    except (TypeError, ValueError):
        return False
    return any(p.name == "mask" or p.kind is p.VAR_KEYWORD for p in params)


def _mask_pixels(fn: td.Distribution, mask: torch.Tensor, site: str) -> td.Distribution:
    """``fn`` with the log-density of unobserved pixels (mask False) left out."""
    base, reinterpreted = peel_independent(fn)
    if base.event_shape:
        raise AdapterError(
            f"cannot mask pixels of the observed site {site!r}: its distribution "
            f"{type(base).__name__} is not one distribution per pixel (event shape "
            f"{tuple(base.event_shape)}); give the model a `mask` argument instead"
        )
    masked = dist.MaskedDistribution(base, mask.bool())
    return dist.Independent(masked, reinterpreted) if reinterpreted else masked


class _ToolkitConventions(Messenger):
    """Inside a wrapped Pyro program: call its data plate ``"data"`` and its observed site
    ``"x"``, and mask the pixels of that site, so the toolkit's ELBO and tasks apply."""

    def __init__(self, data_plate: str, obs_site: str | None, mask: torch.Tensor | None):
        super().__init__()
        self.data_plate = data_plate
        self.obs_site = obs_site
        self.mask = mask

    def _process_message(self, msg: dict[str, Any]) -> None:
        if msg["type"] != "sample":
            return
        if self.data_plate != DATA_PLATE:
            # Plates of the wrapped program sit inside this handler, so their frames are
            # already on the message when it arrives here.
            msg["cond_indep_stack"] = tuple(
                frame._replace(name=DATA_PLATE) if frame.name == self.data_plate else frame
                for frame in msg["cond_indep_stack"]
            )
        if self.obs_site is not None and msg["name"] == self.obs_site and msg["is_observed"]:
            msg["name"] = "x"
            if self.mask is not None:
                msg["fn"] = _mask_pixels(msg["fn"], self.mask, self.obs_site)


def _latent_sites(trace: poutine.Trace) -> dict[str, dict[str, Any]]:
    return {
        name: site
        for name, site in trace.nodes.items()
        if site["type"] == "sample" and not site["is_observed"] and not site_is_subsample(site)
    }


class PyroVAE(Model):
    """A Pyro model and guide as a toolkit Model, without changing their code.

    The model must take the batch as its first argument and put every latent site and the
    observed site inside one plate over datapoints; the guide takes the same arguments and
    samples every latent site from a diagonal Normal (``dist.Normal(loc, scale)``, possibly
    ``.to_event(k)``) inside the same plate. A ``mask`` keyword is passed on if the model or
    guide accepts one; otherwise the adapter masks the observed site's pixels itself.

    Decoding, prior sampling and the latent shapes come from running the model: ``decode``
    conditions it on ``z`` and returns the observed site's distribution.

    Args:
        model: The Pyro model, ``model(x)`` or ``model(x, mask=None)``.
        guide: The Pyro guide (the encoder), same arguments.
        data_shape: Shape of one datapoint as the model expects it.
        modules: The ``nn.Module`` (or a dict of them) whose parameters model and guide use,
            so training, freezing and checkpoints see them. Not needed for a model or guide
            that is itself an ``nn.Module`` (e.g. a ``PyroModule``).
        obs_site: Name of the model's observed site.
        data_plate: Name of the model's plate over datapoints.
        binary_data: Whether the model is evaluated on binarised images.
        config: Config recorded in checkpoints (subclasses registered as backends pass their
            own dataclass). Default: a `PyroVAEConfig`.

    Raises:
        AdapterError: A model without the observed site or plate, latent sites outside the
            plate, or a guide that does not sample every latent from a Normal.
    """

    name = "pyro-vae"
    version = "0"
    config_class = PyroVAEConfig

    def __init__(
        self,
        model: Callable[..., Any],
        guide: Callable[..., Any],
        *,
        data_shape: Sequence[int],
        modules: nn.Module | Mapping[str, nn.Module] | None = None,
        obs_site: str = "x",
        data_plate: str = DATA_PLATE,
        binary_data: bool = True,
        config: Any = None,
    ):
        data_shape = _shape(data_shape, "data_shape")
        super().__init__(config or PyroVAEConfig(data_shape, obs_site, data_plate))
        self.data_shape = data_shape
        self.obs_site = obs_site
        self.data_plate = data_plate
        self.binary_data = binary_data
        # Assigned as attributes, modules among these become submodules (their parameters
        # are this model's); Model.model is a method, hence the other names.
        self.pyro_model = model
        self.pyro_guide = guide
        if isinstance(modules, nn.Module):
            modules = {"net": modules}
        self.networks = nn.ModuleDict(dict(modules or {}))
        self._latent_shapes = self._check()

    def _run(
        self, fn: Callable[..., Any], x: torch.Tensor, mask: torch.Tensor | None, obs_site: bool
    ) -> Any:
        takes_mask = _accepts_mask(fn)
        handler = _ToolkitConventions(
            self.data_plate,
            self.obs_site if obs_site else None,
            None if takes_mask else mask,
        )
        with handler:
            return fn(x, mask=mask) if takes_mask else fn(x)

    def model(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> None:
        self._run(self.pyro_model, x, mask, obs_site=True)

    def guide(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> None:
        """The wrapped guide, under the toolkit's names."""
        self._run(self.pyro_guide, x, mask, obs_site=False)

    def _dummy(self, n: int) -> torch.Tensor:
        return torch.zeros(n, *self.data_shape, device=self.device)

    def _trace(self, fn: Callable[..., Any], *args: Any) -> poutine.Trace:
        # block() keeps these internal runs out of any trace the caller is recording.
        with poutine.block(), torch.no_grad():
            return poutine.trace(fn).get_trace(*args)

    def _check(self) -> dict[str, tuple[int, ...]]:
        model_trace = self._trace(self.model, self._dummy(2))
        if "x" not in model_trace.nodes:
            raise AdapterError(
                f"the Pyro model has no observed site named {self.obs_site!r} (pass obs_site=)"
            )
        event_shape = tuple(model_trace.nodes["x"]["fn"].event_shape)
        if event_shape != self.data_shape:
            raise AdapterError(
                f"the observed site {self.obs_site!r} has event shape {event_shape}, not "
                f"data_shape {self.data_shape}: observe the batch as it is passed in "
                f"(.to_event({len(self.data_shape)})), or pass the data_shape the model reads"
            )
        latents = _latent_sites(model_trace)
        if not latents:
            raise AdapterError("the Pyro model has no latent sample site")
        for name, site in {**latents, "x": model_trace.nodes["x"]}.items():
            if not any(f.name == DATA_PLATE for f in site["cond_indep_stack"]):
                raise AdapterError(
                    f"site {name!r} of the Pyro model is outside the plate "
                    f"{self.data_plate!r}; every site must be per datapoint (pass data_plate=)"
                )
        guide_trace = self._trace(self.guide, self._dummy(2))
        missing = sorted(set(latents) - set(guide_trace.nodes))
        if missing:
            raise AdapterError(f"the guide has no site for the latent(s) {', '.join(missing)}")
        self._gaussian_params(guide_trace, latents, 2)
        return {name: tuple(site["fn"].event_shape) for name, site in latents.items()}

    @staticmethod
    def _gaussian_params(
        guide_trace: poutine.Trace, latents: Mapping[str, Any], n: int
    ) -> GaussianParams:
        params: GaussianParams = {}
        for name in latents:
            fn = guide_trace.nodes[name]["fn"]
            base, _ = peel_independent(fn)
            if not isinstance(base, td.Normal):
                raise AdapterError(
                    f"the guide samples {name!r} from {type(base).__name__}; refiners start "
                    "from a diagonal Normal guide (dist.Normal(loc, scale).to_event(k))"
                )
            shape = (n, *fn.event_shape)
            try:
                loc = base.loc.expand(shape)
                scale = base.scale.expand(shape).clamp_min(_MIN_SCALE)
            except RuntimeError:
                raise AdapterError(
                    f"the guide's site {name!r} has batch shape {tuple(fn.batch_shape)}; "
                    f"expected ({n},): one distribution per datapoint"
                ) from None
            params[name] = (loc, scale)
        return params

    @property
    def latent_shapes(self) -> dict[str, tuple[int, ...]]:
        return dict(self._latent_shapes)

    def amortized_posterior(self) -> PyroGuidePosterior:
        return PyroGuidePosterior(self)

    def decode(self, z: dict[str, torch.Tensor]) -> td.Distribution:
        n = next(iter(z.values())).shape[0]
        with poutine.block():
            trace = poutine.trace(poutine.condition(self.model, data=z)).get_trace(self._dummy(n))
        return trace.nodes["x"]["fn"]

    def sample_prior(self, num_samples: int) -> dict[str, torch.Tensor]:
        trace = self._trace(self.model, self._dummy(num_samples))
        return {name: site["value"] for name, site in _latent_sites(trace).items()}


class PyroGuidePosterior(GaussianPosterior):
    """The guide of a `PyroVAE` as a Gaussian posterior.

    Sampling runs the wrapped guide itself; `gaussian_params` reads each site's Normal
    from one run of it (for a guide where one latent depends on another, the parameters given
    the sampled parent), which is where refiners start.
    """

    def __init__(self, owner: PyroVAE):
        super().__init__()
        self._owner = [owner]  # a list keeps the model out of this module's submodules

    def guide(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> None:
        self._owner[0].guide(x, mask)

    def gaussian_params(self, x: torch.Tensor) -> GaussianParams:
        owner = self._owner[0]
        with poutine.block():
            trace = poutine.trace(owner.guide).get_trace(x)
        return owner._gaussian_params(trace, owner.latent_shapes, x.shape[0])
