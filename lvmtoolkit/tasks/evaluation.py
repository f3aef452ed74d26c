"""The paper's Table 3, completed: restoration scored over a test set.

For every model, observation (a mask kind for inpainting, a noise model for denoising),
method and refiner, the test images are corrupted (seeded, the same for every row),
restored by `restore`, and scored against the clean images:

- SSIM per image (mean and its standard error);
- the conditional negative log-likelihood -log p(x | y) per image (for inpainting
  -log p(x_miss | x_obs)), importance-weighted with the method's own posterior
  (`restore`'s ``reference``);
- the FID of the restored set against the clean set, on a feature extractor.

The corrupted inputs are scored too, as the row every method should beat.
"""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch

from lvmtoolkit.core.model import Model
from lvmtoolkit.core.refiner import Refiner
from lvmtoolkit.data import EVAL_BINARIZATION_SEED
from lvmtoolkit.errors import LvmError, OptionError
from lvmtoolkit.metrics.fid import FeatureExtractor, features_of, frechet_distance
from lvmtoolkit.metrics.report import Report, options_of
from lvmtoolkit.metrics.ssim import ssim
from lvmtoolkit.tasks import MASK_KINDS, METHODS, NOISE_KINDS
from lvmtoolkit.tasks.gibbs import GIBBS_REFINER_DEFAULTS, gibbs_refiner, pseudo_gibbs
from lvmtoolkit.tasks.observations import Missing, ObservationModel, parse_observation
from lvmtoolkit.tasks.restoration import (
    METHOD_DEFAULTS,
    NLL_SAMPLES,
    RESTORATION_REFINER_DEFAULTS,
    restoration_refiner,
    restore,
)

Task = Literal["inpaint", "denoise"]
CORRUPTION_SEED = 2024
"""Seed of the random masks and of the noise (the same for every model, method and refiner)."""


@dataclass
class Corrupted:
    """Clean images, their corrupted version and (for masks) the observed-pixel mask."""

    clean: torch.Tensor
    corrupted: torch.Tensor
    observed: torch.Tensor | None


def observation_of(task: Task, kind: str) -> ObservationModel:
    """The observation model of a kind: ``missing`` with that region for inpainting (``centre``,
    ``half``, ``random``); for denoising the kind is a noise model, ``NAME[:KEY=VALUE,...]``.
    """
    if task == "inpaint":
        if kind not in MASK_KINDS:
            raise OptionError(f"unknown mask kind {kind!r}; kinds: {', '.join(MASK_KINDS)}")
        return Missing(region=kind)
    if task == "denoise":
        return parse_observation(kind)
    raise OptionError(f"unknown task {task!r}; tasks: inpaint, denoise")


def corrupt(task: Task, kind: str, clean: torch.Tensor, seed: int = CORRUPTION_SEED) -> Corrupted:
    """Corrupt ``clean`` with a mask kind (inpainting) or a noise model (denoising).

    Missing pixels of the corrupted images are 0 (where the encoder and the chain start).
    """
    observed = observation_of(task, kind).corrupt(clean, seed=seed)
    return Corrupted(clean, observed.y, observed.mask)


def kinds_of(task: Task) -> dict[str, str]:
    """The default corruption kinds of a task, with their descriptions."""
    return MASK_KINDS if task == "inpaint" else NOISE_KINDS


def ssim_row(restored: torch.Tensor, clean: torch.Tensor) -> dict[str, float]:
    """The SSIM columns of a results row: ``{"ssim": mean, "ssim_sem": standard error}``
    over the images, rounded to 4 decimals."""
    values = ssim(restored, clean)
    sem = values.std().item() / math.sqrt(values.numel()) if values.numel() > 1 else 0.0
    return {"ssim": round(values.mean().item(), 4), "ssim_sem": round(sem, 4)}


def _nll_row(log_likelihood: torch.Tensor) -> dict[str, float]:
    nll = -log_likelihood.double()
    finite = torch.isfinite(nll)
    row = {"nll": round(nll[finite].mean().item(), 3) if finite.any() else math.inf}
    if finite.sum() > 1:
        row["nll_sem"] = round(nll[finite].std().item() / math.sqrt(int(finite.sum())), 3)
    if not finite.all():
        row["nll_infinite"] = int((~finite).sum())
    return row


def restoration_refiners(
    names: Sequence[str] | None, options: Mapping[str, Any] | None = None
) -> dict[str, Refiner]:
    """Registered refiners configured for restoration, with options routed to them.

    As `gibbs_refiners`, with `RESTORATION_REFINER_DEFAULTS` for options not given.
    """
    return _routed(names, options, restoration_refiner)


def gibbs_refiners(
    names: Sequence[str] | None, options: Mapping[str, Any] | None = None
) -> dict[str, Refiner]:
    """Registered refiners configured for the pseudo-Gibbs chain, with options routed to them.

    An option ``"svi.lr"`` goes to the ``svi`` refiner only; a plain ``"steps"`` goes to
    every refiner that declares it (and to none that does not; an option no refiner takes
    is an error). Options not given take `GIBBS_REFINER_DEFAULTS`.

    Args:
        names: Registered refiner names; None: every installed refiner.
        options: ``{"NAME.KEY" or "KEY": value}``, values typed or as strings.

    Returns:
        Configured refiners by name.

    Raises:
        OptionError: An option for a refiner that is not among ``names``, or one that none
            of them takes, or an invalid value.
    """
    return _routed(names, options, gibbs_refiner)


def _routed(
    names: Sequence[str] | None,
    options: Mapping[str, Any] | None,
    make: Callable[..., Refiner],
) -> dict[str, Refiner]:
    from lvmtoolkit.plugins import get_refiner
    from lvmtoolkit.plugins import refiners as installed_refiners

    names = list(names) if names is not None else sorted(installed_refiners())
    per_refiner: dict[str, dict[str, Any]] = {name: {} for name in names}
    for key, value in (options or {}).items():
        scope, dot, option = key.rpartition(".")
        if dot:
            if scope not in per_refiner:
                raise OptionError(f"option {key}: refiner {scope!r} is not evaluated")
            per_refiner[scope][option] = value
            continue
        takers = [name for name in names if option in get_refiner(name).option_names()]
        if not takers:
            raise OptionError(f"option {key}: none of the refiners {', '.join(names)} has it")
        for name in takers:
            per_refiner[name].setdefault(option, value)
    return {name: make(name, **per_refiner[name]) for name in names}


def evaluate_restoration(
    task: Task,
    models: Mapping[str, Model],
    refiners: Mapping[str, Refiner],
    images: torch.Tensor,
    kinds: Sequence[str],
    *,
    methods: Sequence[str] = ("conditional",),
    chain_refiners: Mapping[str, Refiner] | None = None,
    num_samples: int | None = None,
    iterations: int | None = None,
    nll_samples: int = NLL_SAMPLES,
    seed: int = 0,
    extractor: FeatureExtractor | None = None,
    batch_size: int = 1000,
    grid_rows: int = 0,
    images_label: str = "",
    log: Callable[[str], None] | None = None,
) -> Report:
    """Restore corrupted test images with every model x method x refiner and score them.

    Args:
        task: ``"inpaint"`` (kinds are mask kinds: ``centre``, ``half``, ``random``) or
            ``"denoise"`` (kinds are noise models, ``NAME[:KEY=VALUE,...]``).
        models: Models by name (backend name, or any label).
        refiners: Refiners of q(z | y) by name, for ``conditional``, ``importance`` and
            ``mwg`` (see `restoration_refiners`).
        images: ``(N, C, H, W)`` test images in [0, 1]; a model with ``binary_data`` (the
            default) gets them binarised with the fixed evaluation seed.
        kinds: Mask kinds or noise models.
        methods: Methods of `METHODS`.
        chain_refiners: Refiners run in every iteration of ``pseudo-gibbs``, by the same
            names; default: each refiner's name with the chain's per-iteration defaults
            (`gibbs_refiner`).
        num_samples: Samples of z (conditional) or importance samples; default per method.
        iterations: Chain length of ``mwg`` and ``pseudo-gibbs``; default per method.
        nll_samples: Importance samples of the conditional log-likelihood estimate.
        seed: Seed of the sampling noise.
        extractor: FID feature extractor; None skips FID.
        batch_size: Images restored together (memory; the same results).
        grid_rows: Keep this many images per kind for a figure (see `grid_columns`).
        images_label: Which images these are, in words, for the protocol.
        log: Called with a progress line after each row.

    Returns:
        A `Report` of kind ``task`` whose results are ``{model: {kind: {"corrupted": row,
        "methods": {method: {refiner: row}}}}}``, where a row holds ``ssim``,
        ``ssim_sem``, ``nll`` and ``nll_sem`` (nats per image; not for the corrupted
        input), ``fid`` (if scored), ``seconds`` and ``seconds_per_image`` (the
        restoration, not its scoring; the refinement of q(z | y) is run once per refiner
        and shared by conditional, importance and mwg, and counted in each),
        ``acceptance`` (mwg), ``effective_sample_size`` (importance), or ``error`` when that
        run failed; ``extras["grid"]`` holds the kept images.
    """
    from lvmtoolkit.data import binarize_fixed

    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise OptionError(f"unknown method {', '.join(unknown)}; methods: {', '.join(METHODS)}")
    observations = {kind: observation_of(task, kind) for kind in kinds}
    if chain_refiners is None and "pseudo-gibbs" in methods:
        chain_refiners = {name: gibbs_refiner(r.name) for name, r in refiners.items()}
    if batch_size < 1:
        raise OptionError(f"batch_size must be >= 1, got {batch_size}")
    results: dict[str, Any] = {}
    grid: dict[str, Any] = {}
    for model_name, model in models.items():
        binary = bool(getattr(model, "binary_data", True))
        clean = (binarize_fixed(images) if binary else images).to(model.device)
        clean_features = features_of(extractor, clean) if extractor is not None else None
        results[model_name] = {}
        for kind, observation in observations.items():
            observed = observation.corrupt(clean, seed=CORRUPTION_SEED)
            corrupted_row = ssim_row(observed.y, clean)
            if extractor is not None:
                corrupted_row["fid"] = round(
                    frechet_distance(features_of(extractor, observed.y), clean_features), 3
                )
            by_method: dict[str, dict[str, Any]] = {}
            results[model_name][kind] = {"corrupted": corrupted_row, "methods": by_method}
            if grid_rows and kind not in grid:
                grid[kind] = {
                    "clean": clean[:grid_rows].cpu(),
                    "corrupted": observed.y[:grid_rows].cpu(),
                    "missing": None if observed.mask is None else ~observed.mask[:grid_rows].cpu(),
                    "restored": {},
                }
            refined: dict[str, Any] = {}  # one q(z | y) per refiner, shared by methods
            for method in methods:
                by_method[method] = {}
                for refiner_name, refiner in refiners.items():
                    chain_refiner = (chain_refiners or {}).get(refiner_name, refiner)
                    row = _evaluate_one(
                        model, clean, observed, observation, method,
                        chain_refiner if method == "pseudo-gibbs" else refiner,
                        num_samples, iterations, nll_samples, seed, batch_size,
                        refined.setdefault(refiner_name, {}),
                    )  # fmt: skip
                    restored = row.pop("_images", None)
                    if restored is not None and extractor is not None:
                        row["fid"] = round(
                            frechet_distance(features_of(extractor, restored), clean_features), 3
                        )
                    by_method[method][refiner_name] = row
                    if restored is not None and grid_rows and kind in grid:
                        label = f"{model_name} {refiner_name} {method}"
                        grid[kind]["restored"][label] = restored[:grid_rows].cpu()
                    if log is not None:
                        log(_log_line(model_name, kind, method, refiner_name, row))
    protocol = {
        "images": images_label or f"{images.shape[0]} images",
        "kinds": {kind: obs.describe() for kind, obs in observations.items()},
        "binarization": f"fixed Bernoulli draw, seed {EVAL_BINARIZATION_SEED}, for models "
        "of binary data",
        "corruption_seed": CORRUPTION_SEED,
        "methods": {m: METHODS[m] for m in methods},
        "method_defaults": {m: METHOD_DEFAULTS[m] for m in methods},
        "num_samples": num_samples,
        "iterations": iterations,
        "seed": seed,
        "restoration_refiner_defaults": RESTORATION_REFINER_DEFAULTS,
        "chain_refiner_defaults": GIBBS_REFINER_DEFAULTS,
        "chain_refiners": {n: options_of(r) for n, r in (chain_refiners or {}).items()},
        "result": "the posterior mean E[x | y] (pseudo-gibbs: the likelihood mean at the "
        "chain's last iteration in the unknown pixels)",
        "ssim": "pytorch_msssim.ssim, single scale, 11x11 Gaussian window, data_range 1; "
        "mean over images (sem: its standard error)",
        "nll": f"-log p(x | y) in nats per image (inpainting: -log p(x_miss | x_obs)), "
        f"self-normalised importance estimate with {nll_samples} samples from the "
        "method's posterior (mwg: the average of p(x | y, z_t) over its chain after "
        "burn-in); pseudo-gibbs: its last posterior q(z | x'_T) as proposal",
        "fid": extractor.label if extractor is not None else None,
        "fid_reference": "the clean versions of the same images",
    }
    return Report(
        task,
        list(models),
        {name: options_of(r) for name, r in refiners.items()},
        protocol,
        results,
        extras={"grid": grid},
    )


def _evaluate_one(
    model: Model,
    clean: torch.Tensor,
    observed: Any,
    observation: ObservationModel,
    method: str,
    refiner: Refiner,
    num_samples: int | None,
    iterations: int | None,
    nll_samples: int,
    seed: int,
    batch_size: int,
    refined: dict[int, tuple[Any, float]],
) -> dict[str, Any]:
    """One row. ``refined`` caches each batch's refined q(z | y) and its refinement time,
    so the methods after the first reuse it; each row's seconds, with and without scoring,
    include that time."""
    started = time.perf_counter()
    parts, likelihoods, extras = [], [], {"acceptance": [], "effective_sample_size": []}
    seconds = reused = 0.0
    try:
        for start in range(0, clean.shape[0], batch_size):
            part = slice(start, start + batch_size)
            cached = refined.get(start) if method != "pseudo-gibbs" else None
            restored = restore(
                model, observed.y[part], observation,
                mask=None if observed.mask is None else observed.mask[part], method=method,
                refiner=refiner, num_samples=num_samples, iterations=iterations, seed=seed,
                reference=clean[part], nll_samples=nll_samples,
                posterior=None if cached is None else cached[0],
            )  # fmt: skip
            seconds += restored.seconds
            if method != "pseudo-gibbs":
                if cached is None:
                    refined[start] = (restored.posterior, restored.info["refine_seconds"])
                else:
                    reused += cached[1]  # the shared refinement counts for every method
            parts.append(restored.images)
            likelihoods.append(restored.log_likelihood)
            for key, values in extras.items():
                if key in restored.info:
                    values.append(restored.info[key])
    except LvmError as err:
        return {"error": str(err)}
    images = torch.cat(parts)
    row: dict[str, Any] = {**ssim_row(images, clean), **_nll_row(torch.cat(likelihoods))}
    for key, values in extras.items():
        if values:
            row[key] = round(torch.cat(values).float().mean().item(), 4)
    seconds += reused
    row["seconds"] = round(seconds, 1)
    row["seconds_per_image"] = round(seconds / clean.shape[0], 4)
    # This row's wall time did not include the reused refinement; add it, so that the
    # total is never below the restoration time alone.
    row["seconds_with_scoring"] = round(time.perf_counter() - started + reused, 1)
    row["_images"] = images
    return row


def _log_line(model: str, kind: str, method: str, refiner: str, row: dict[str, Any]) -> str:
    where = f"{model} {kind} {method} {refiner}"
    if "error" in row:
        return f"{where}: failed: {row['error']}"
    fid = f", FID {row['fid']:.2f}" if "fid" in row else ""
    return (
        f"{where}: SSIM {row['ssim']:.4f}, NLL {row['nll']:.2f}{fid} "
        f"({row['seconds']} s, {row['seconds_with_scoring']} s with scoring)"
    )


def grid_columns(
    grid: Mapping[str, Any],
) -> tuple[list[tuple[str, torch.Tensor]], torch.Tensor | None]:
    """Columns for `lvmtoolkit.images.save_grid` from a report's ``extras["grid"]``.

    Rows are the kept images of every kind, one kind after the other; columns are the
    original, the corrupted input and each restored column (model, refiner, method): the
    paper's Figures 6 and 7.
    """
    kinds = list(grid)
    if not kinds:
        raise LvmError("no images were kept for a grid")
    labels = list(dict.fromkeys(label for k in kinds for label in grid[k]["restored"]))

    def stack(get: Callable[[dict[str, Any]], torch.Tensor]) -> torch.Tensor:
        return torch.cat([get(grid[k]) for k in kinds])

    def restored(g: dict[str, Any], label: str) -> torch.Tensor:
        # A run that failed shows as a grey cell.
        return g["restored"].get(label, torch.full_like(g["clean"], 0.5))

    columns = [
        ("original", stack(lambda g: g["clean"])),
        ("input", stack(lambda g: g["corrupted"])),
    ]
    for label in labels:
        columns.append((label, stack(lambda g, label=label: restored(g, label))))
    missing = None
    if all(grid[k]["missing"] is not None for k in kinds):
        missing = stack(lambda g: g["missing"])
    return columns, missing


def evaluate_task(
    task: Task,
    models: Mapping[str, Model],
    refiners: Mapping[str, Refiner],
    images: torch.Tensor,
    kinds: Sequence[str],
    *,
    iterations: int = 100,
    seed: int = 0,
    extractor: FeatureExtractor | None = None,
    record_every: int = 0,
    grid_rows: int = 0,
    images_label: str = "",
    log: Callable[[str], None] | None = None,
) -> Report:
    """Deprecated: the pseudo-Gibbs chain alone, scored by SSIM and FID (the old Table 3).

    Use `evaluate_restoration` (``methods=["pseudo-gibbs"]`` for this chain, with the
    conditional log-likelihood too). Results are ``{model: {kind: {"corrupted": row,
    refiner: row}}}`` as before, with ``ssim_by_iteration`` when ``record_every`` is set.
    """
    from lvmtoolkit.data import binarize_fixed

    warnings.warn(
        "evaluate_task is deprecated: use evaluate_restoration(..., methods=['pseudo-gibbs'])",
        DeprecationWarning,
        stacklevel=2,
    )
    results: dict[str, Any] = {}
    grid: dict[str, Any] = {}
    for model_name, model in models.items():
        binary = bool(getattr(model, "binary_data", True))
        clean = (binarize_fixed(images) if binary else images).to(model.device)
        features = features_of(extractor, clean) if extractor is not None else None
        results[model_name] = {}
        for kind in kinds:
            data = corrupt(task, kind, clean)
            rows: dict[str, Any] = {"corrupted": ssim_row(data.corrupted, clean)}
            for refiner_name, refiner in refiners.items():
                started = time.perf_counter()
                try:
                    result = pseudo_gibbs(
                        model, data.corrupted, data.observed, refiner, iterations=iterations,
                        seed=seed, record_every=record_every,
                    )  # fmt: skip
                except LvmError as err:
                    rows[refiner_name] = {"error": str(err)}
                    continue
                row = ssim_row(result.images, clean)
                if extractor is not None:
                    row["fid"] = round(
                        frechet_distance(features_of(extractor, result.images), features), 3
                    )
                if record_every:
                    row["ssim_by_iteration"] = {
                        str(t): round(ssim(image, clean).mean().item(), 4)
                        for t, image in zip(result.recorded_at, result.trajectory, strict=True)
                    }
                row["seconds"] = round(time.perf_counter() - started, 1)
                rows[refiner_name] = row
                if log is not None:
                    log(f"{model_name} {refiner_name} {kind}: SSIM {row['ssim']:.4f}")
            results[model_name][kind] = rows
    protocol = {
        "images": images_label or f"{images.shape[0]} images",
        "kinds": {k: kinds_of(task).get(k, k) for k in kinds},
        "corruption_seed": CORRUPTION_SEED,
        "iterations": iterations,
        "chain_seed": seed,
        "per_iteration_defaults": GIBBS_REFINER_DEFAULTS,
        "fid": extractor.label if extractor is not None else None,
    }
    return Report(
        task,
        list(models),
        {name: options_of(r) for name, r in refiners.items()},
        protocol,
        results,
        extras={"grid": grid},
    )
