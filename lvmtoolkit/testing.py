"""A pytest plugin for plugin authors: fixtures and a backend conformance check.

Installing lvmtoolkit registers this module with pytest (entry point ``pytest11``), so a
plugin's tests can use these fixtures without importing anything:

- ``lvm_plugins``: register plugin objects for one test; they are unregistered afterwards.
- ``lvm_pyro``: a clean Pyro state: empty param store, seeds set, validation on.
- ``lvm_images`` / ``lvm_digits``: 64 real MNIST digits (grey levels) / 16 of them
  binarised with the fixed evaluation seed.
- ``lvm_tiny_model``: a small, untrained VAE (`make_tiny_model`) on 28x28 digits.
- ``lvm_cli``: run ``lvm`` in-process and get Click's result.

`check_model` runs a model through what refiners and tasks need from it;
`check_refiner` runs a refiner through what its callers need from it.

Nothing here is autouse, and torch is imported only when a fixture runs, so the plugin
costs nothing in test sessions that do not use it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

try:
    import pytest
except ImportError:  # check_model and check_refiner work without pytest; fixtures need it

    class _NoPytest:
        @staticmethod
        def fixture(function: Any = None, **_: Any) -> Any:
            return function if callable(function) else (lambda f: f)

    pytest = _NoPytest()  # type: ignore[assignment]

if TYPE_CHECKING:
    import torch
    from click.testing import Result

    from lvmtoolkit.adapters import TorchVAE
    from lvmtoolkit.core.model import Model

__all__ = [
    "ModelCheckError",
    "PluginRegistrar",
    "RefinerCheckError",
    "check_model",
    "check_refiner",
    "make_tiny_model",
]


class ModelCheckError(AssertionError):
    """A model that breaks the contract refiners and tasks rely on (raised by check_model)."""


class PluginRegistrar:
    """Registers plugins on lvmtoolkit's plugin manager and unregisters them on ``close``.

    Attributes:
        pm: The ``pluggy.PluginManager`` every registry reads from.
    """

    def __init__(self) -> None:
        from lvmtoolkit.plugins import load_plugins, pm

        # Load installed plugins first, so a later lazy load cannot clash with ours.
        load_plugins()
        self.pm = pm
        self._registered: list[Any] = []

    def register(self, plugin: Any, name: str | None = None) -> Any:
        """Register ``plugin`` (a module, class or object with ``@hookimpl`` functions).

        Args:
            plugin: The plugin object.
            name: Its name in ``lvm plugins``; default: pluggy's (the object's id).

        Returns:
            ``plugin``, so the call can wrap a definition.
        """
        self.pm.register(plugin, name=name)
        self._registered.append(plugin)
        return plugin

    def close(self) -> None:
        """Unregister every plugin this registrar registered (newest first)."""
        while self._registered:
            plugin = self._registered.pop()
            if self.pm.is_registered(plugin):
                self.pm.unregister(plugin)


@pytest.fixture
def lvm_plugins() -> Iterator[PluginRegistrar]:
    """Register plugins for the length of one test: ``lvm_plugins.register(MyPlugin())``."""
    registrar = PluginRegistrar()
    try:
        yield registrar
    finally:
        registrar.close()


@pytest.fixture
def lvm_pyro() -> Iterator[None]:
    """Empty Pyro param store, torch and Pyro seeded with 0, Pyro validation on."""
    import pyro

    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    pyro.enable_validation(True)
    try:
        yield
    finally:
        pyro.enable_validation(False)
        pyro.clear_param_store()


@pytest.fixture(scope="session")
def lvm_images() -> torch.Tensor:
    """64 real MNIST test digits of the bundled mnist-5k split: ``(64, 1, 28, 28)`` in [0, 1]."""
    from lvmtoolkit.plugins import get_dataset

    return get_dataset("mnist-5k")().load("test").images[:64].clone()


@pytest.fixture
def lvm_digits(lvm_images: torch.Tensor) -> torch.Tensor:
    """The first 16 of ``lvm_images``, binarised with the fixed evaluation seed."""
    from lvmtoolkit.data import binarize_fixed

    return binarize_fixed(lvm_images[:16])


def make_tiny_model(latent_dim: int = 4, hidden: int = 32, seed: int = 0) -> TorchVAE:
    """A small untrained MLP VAE on ``(1, 28, 28)`` images (Bernoulli likelihood).

    Args:
        latent_dim: Dimension of z.
        hidden: Width of the single hidden layer of encoder and decoder.
        seed: Seed of the initial weights.

    Returns:
        The model in eval mode.
    """
    import torch
    from torch import nn

    from lvmtoolkit.adapters import TorchVAE

    generator_state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        encoder = nn.Sequential(
            nn.Flatten(), nn.Linear(784, hidden), nn.ELU(), nn.Linear(hidden, 2 * latent_dim)
        )
        decoder = nn.Sequential(nn.Linear(latent_dim, hidden), nn.ELU(), nn.Linear(hidden, 784))
    finally:
        torch.random.set_rng_state(generator_state)
    return TorchVAE(encoder, decoder, data_shape=(1, 28, 28), latent_shape=(latent_dim,)).eval()


@pytest.fixture
def lvm_tiny_model(lvm_pyro: None) -> TorchVAE:
    """`make_tiny_model` with its defaults (z = 4, one hidden layer of 32)."""
    return make_tiny_model()


@pytest.fixture
def lvm_cli() -> Callable[..., Result]:
    """Run ``lvm`` in-process: ``result = lvm_cli("refine", "--steps", "1")``.

    The function takes the arguments as strings (and an optional ``input=`` for stdin)
    and returns ``click.testing.Result``: ``exit_code``, ``stdout``, ``stderr``.
    """
    from click.testing import CliRunner

    from lvmtoolkit.cli import cli

    def invoke(*args: str, input: str | None = None) -> Result:
        return CliRunner().invoke(cli, list(args), input=input, catch_exceptions=False)

    return invoke


def _built_from_config(model_class: type) -> bool:
    """Whether ``model_class(config)`` is how the class is built (one required argument)."""
    import inspect

    try:
        params = list(inspect.signature(model_class).parameters.values())
    except (TypeError, ValueError):
        return False
    required = [
        p
        for p in params
        if p.default is p.empty and p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)
    ]
    keyword_only = [p for p in params if p.default is p.empty and p.kind is p.KEYWORD_ONLY]
    return len(required) <= 1 and not keyword_only


def check_model(model: Model, x: torch.Tensor, *, rebuild: bool | None = None) -> None:
    """Check that ``model`` gives refiners and tasks what they need.

    Checks: latent shapes and prior samples agree; ``decode`` gives batch ``(N,)`` and
    event ``data_shape``; the amortized posterior gives a finite per-datapoint ELBO with
    and without a pixel mask, and a masked-out pixel does not change it; for a model that
    declares `Model.latent_prior`, the direct ELBO equals Pyro's (values and gradients,
    same draws; closed-form KL, Monte-Carlo KL, sticking the landing, a mask); two ``svi``
    steps run and return a posterior no worse than the start; and (``rebuild``) the class
    rebuilds itself from its config as checkpoints do.

    Args:
        model: The model (in eval mode).
        x: A small batch it can score, ``(N, *model.data_shape)``.
        rebuild: Also check ``type(model).from_config(config)``, as checkpoints rebuild
            registered backends. Default: when the class is built from a config alone
            (not for a `TorchVAE` or
            `PyroVAE` wrapping networks directly).

    Raises:
        ModelCheckError: The first broken expectation, with what was expected.
    """
    import torch
    from pyro import poutine

    from lvmtoolkit.core.elbo import per_datapoint_elbo
    from lvmtoolkit.core.posterior import LocalGaussianPosterior
    from lvmtoolkit.metrics import nelbo
    from lvmtoolkit.refiners import SVIRefiner

    def expect(condition: bool, message: str) -> None:
        if not condition:
            raise ModelCheckError(f"{type(model).__name__}: {message}")

    n = x.shape[0]
    expect(tuple(x.shape[1:]) == tuple(model.data_shape), "x does not have data_shape")
    shapes = model.latent_shapes
    prior = model.sample_prior(3)
    expect(set(prior) == set(shapes), f"sample_prior gives {sorted(prior)}, not {sorted(shapes)}")
    for site, shape in shapes.items():
        got = tuple(prior[site].shape)
        expect(got == (3, *shape), f"prior sample {site!r} has shape {got}, not (3, *{shape})")
    likelihood = model.decode(prior)
    expect(tuple(likelihood.batch_shape) == (3,), "decode's batch shape is not (N,)")
    expect(
        tuple(likelihood.event_shape) == tuple(model.data_shape),
        f"decode's event shape {tuple(likelihood.event_shape)} is not data_shape",
    )
    posterior = model.amortized_posterior()
    with torch.no_grad():
        elbo = per_datapoint_elbo(model.model, posterior, x)
        expect(tuple(elbo.shape) == (n,), f"the ELBO has shape {tuple(elbo.shape)}, not ({n},)")
        expect(bool(torch.isfinite(elbo).all()), "the ELBO is not finite")
        mask = torch.ones_like(x, dtype=torch.bool)
        mask[..., 0] = False
        masked = per_datapoint_elbo(model.model, posterior, x, mask=mask)
        expect(bool(torch.isfinite(masked).all()), "the masked ELBO is not finite")
        # With the latents fixed, pixels where the mask is False must not enter the likelihood.
        z = model.sample_prior(n)
        flipped = x.clone()
        flipped[..., 0] = 1 - flipped[..., 0]

        def observed_log_prob(batch: torch.Tensor) -> torch.Tensor:
            trace = poutine.trace(poutine.condition(model.model, data=z)).get_trace(batch, mask)
            site = trace.nodes["x"]
            return site["fn"].log_prob(site["value"])

        expect(
            torch.allclose(observed_log_prob(x), observed_log_prob(flipped)),
            "a pixel where the mask is False changes the likelihood",
        )
    if model.latent_prior(n, x) is not None:
        _check_direct_elbo(model, x, mask, expect)
    refiner = SVIRefiner(steps=2, select_samples=2)
    result = refiner.refine(model, x)
    # Scored with the noise svi keeps the best by: never worse than the start under it.
    selection = {"num_samples": 2, "seed": refiner.selection_seed}
    start = nelbo(model, LocalGaussianPosterior.from_posterior(posterior, x), x, **selection)
    end = nelbo(model, result.posterior, x, **selection)
    expect(bool(torch.isfinite(end).all()), "the refined posterior's NELBO is not finite")
    expect(bool((end <= start + 1e-3).all()), "svi returned a posterior worse than the start")
    if rebuild is None:
        rebuild = _built_from_config(type(model)) and dataclasses.is_dataclass(model.config)
    if rebuild:
        config = dataclasses.asdict(model.config)
        rebuilt = type(model).from_config(config)
        ours = {k: tuple(v.shape) for k, v in model.state_dict().items()}
        theirs = {k: tuple(v.shape) for k, v in rebuilt.state_dict().items()}
        expect(ours == theirs, "from_config(config) builds other parameters than the model's")


def _check_direct_elbo(
    model: Model, x: torch.Tensor, mask: torch.Tensor, expect: Callable[[bool, str], None]
) -> None:
    """A flat model's direct ELBO equals Pyro's, in value and gradient, for the same draws."""
    import torch

    from lvmtoolkit.core.elbo import per_datapoint_elbo
    from lvmtoolkit.core.model import direct_elbo
    from lvmtoolkit.core.posterior import LocalGaussianPosterior
    from lvmtoolkit.core.runtime import frozen

    n = x.shape[0]
    prior = model.latent_prior(n, x)
    expect(
        set(prior) == set(model.latent_shapes),
        f"latent_prior gives {sorted(prior)}, not the latent sites {sorted(model.latent_shapes)}",
    )
    with frozen(model):
        local = LocalGaussianPosterior.from_posterior(model.amortized_posterior(), x)
        for label, kwargs in {
            "closed-form KL": {"analytic_kl": True},
            "Monte-Carlo KL": {"analytic_kl": False},
            "sticking the landing": {"analytic_kl": False, "stl": True},
            "a pixel mask": {"analytic_kl": True, "mask": mask},
        }.items():
            values, grads = [], []
            for direct in (True, False):
                torch.manual_seed(0)
                if direct:
                    mask_arg = kwargs.get("mask")
                    options = {k: v for k, v in kwargs.items() if k != "mask"}
                    elbo = direct_elbo(model, local, x, mask_arg, **options)
                else:
                    elbo = per_datapoint_elbo(model.model, local, x, **kwargs)
                expect(elbo is not None, "latent_prior is given but the direct ELBO is not used")
                local.zero_grad(set_to_none=True)
                elbo.sum().backward()
                values.append(elbo.detach())
                grads.append([p.grad.clone() for p in local.parameters()])
            expect(
                torch.allclose(values[0], values[1], rtol=1e-5, atol=1e-4),
                f"with {label}, the direct ELBO ({values[0][:3].tolist()}...) is not Pyro's "
                f"({values[1][:3].tolist()}...): `model` is not flat as latent_prior promises",
            )
            expect(
                all(
                    torch.allclose(a, b, rtol=1e-4, atol=1e-4) for a, b in zip(*grads, strict=True)
                ),
                f"with {label}, the direct ELBO's gradient is not Pyro's",
            )


class RefinerCheckError(AssertionError):
    """A refiner that breaks the contract callers rely on (raised by check_refiner)."""


def check_refiner(
    refiner: Any,
    model: Model,
    x: torch.Tensor,
    *,
    eval_samples: int = 64,
    tolerance: float = 1.0,
) -> None:
    """Check that ``refiner`` keeps the Refiner contract on ``model`` and ``x``.

    Checks: the trace has shape ``(steps, N)`` and ``result.steps == refiner.steps``;
    ``on_checkpoint`` is called exactly once at each requested step within ``0..steps``,
    in order, and never beyond; the posterior serves exactly the N datapoints, samples
    every latent site and has finite parameters; it is no worse than the start (the
    amortized posterior), per datapoint, by more than ``tolerance`` nats under an
    ``eval_samples``-sample NELBO with common noise (refiners keep each datapoint's best
    under their own estimate, so only Monte-Carlo disagreement is allowed); a warm start
    from its own result runs and is no worse on average; and ``with_options()`` rebuilds
    the same refiner.

    Args:
        refiner: A configured refiner (keep ``steps`` small: the check runs it twice).
        model: A model (in eval mode).
        x: A small batch it can score, ``(N, *model.data_shape)``.
        eval_samples: Samples per NELBO in the comparisons.
        tolerance: Largest per-datapoint NELBO increase allowed, in nats.

    Raises:
        RefinerCheckError: The first broken expectation, with what was expected.
    """
    import torch
    from pyro import poutine

    from lvmtoolkit.core.nelbo import nelbo

    def expect(condition: bool, message: str) -> None:
        if not condition:
            raise RefinerCheckError(f"{type(refiner).__name__}: {message}")

    n, steps = x.shape[0], refiner.steps
    expect(steps >= 0 and (refiner.iterative or steps == 0), "a non-iterative refiner has steps")
    again = refiner.with_options()
    expect(type(again) is type(refiner), "with_options() returns another class")
    expect(again.options == refiner.options, "with_options() changes the options")

    requested = sorted({0, 1, steps, steps + 3})
    calls: list[int] = []

    def on_checkpoint(step: int, posterior: Any) -> None:
        calls.append(step)
        expect(posterior.num_datapoints in (None, n), f"checkpoint {step}: wrong batch size")

    result = refiner.refine(model, x, checkpoints=requested, on_checkpoint=on_checkpoint)
    expected_calls = [s for s in requested if s <= steps]
    expect(calls == expected_calls, f"on_checkpoint called at {calls}, not {expected_calls}")
    expect(result.steps == steps, f"result.steps is {result.steps}, not {steps}")
    expect(
        tuple(result.trace.shape) == (steps, n),
        f"trace has shape {tuple(result.trace.shape)}, not ({steps}, {n})",
    )
    posterior = result.posterior
    expect(posterior.num_datapoints in (None, n), "the posterior serves another batch size")
    for name, tensor in [*posterior.named_parameters(), *posterior.named_buffers()]:
        expect(bool(torch.isfinite(tensor).all()), f"posterior tensor {name} is not finite")
    with torch.no_grad():
        guide_trace = poutine.trace(posterior).get_trace(x)
    for site, shape in model.latent_shapes.items():
        expect(site in guide_trace.nodes, f"the posterior has no site {site!r}")
        got = tuple(guide_trace.nodes[site]["value"].shape)
        expect(got == (n, *shape), f"site {site!r} has shape {got}, not ({n}, *{shape})")

    def score(p: Any) -> torch.Tensor:
        return nelbo(model, p, x, num_samples=eval_samples, seed=12345)

    start, end = score(model.amortized_posterior()), score(posterior)
    expect(bool(torch.isfinite(end).all()), "the refined posterior's NELBO is not finite")
    worst = (end - start).max().item()
    expect(worst <= tolerance, f"a datapoint got worse by {worst:.3f} nats (> {tolerance})")
    warm = refiner.refine(model, x, init=posterior)
    expect(warm.posterior.num_datapoints in (None, n), "a warm start serves another batch size")
    warm_end = score(warm.posterior)
    expect(
        warm_end.mean().item() <= end.mean().item() + tolerance / 4,
        f"a warm start from its own result got worse on average "
        f"({end.mean().item():.3f} -> {warm_end.mean().item():.3f})",
    )
