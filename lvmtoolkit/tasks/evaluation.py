"""SSIM and FID of Gibbs inpainting and denoising over a test set (the paper's Table 3).

For every model and refiner, and every corruption kind, the test images are corrupted
(seeded masks or noise), restored by the Gibbs chain of :mod:`lvmtoolkit.tasks.gibbs`, and
scored against the clean images: SSIM per image (mean and its standard error) and the FID
of the restored set against the clean set. The corrupted inputs themselves are scored too,
as the row every method should beat.
"""

from __future__ import annotations

import math
import time
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
from lvmtoolkit.tasks.corruption import MASK_KINDS, NOISE_KINDS, add_noise, make_mask
from lvmtoolkit.tasks.gibbs import GIBBS_REFINER_DEFAULTS, denoise, gibbs_refiner, inpaint

Task = Literal["inpaint", "denoise"]
CORRUPTION_SEED = 2024
"""Seed of the random masks and of the noise (the same for every model and refiner)."""


@dataclass
class Corrupted:
    """Clean images, their corrupted version and (inpainting) the known-pixel mask."""

    clean: torch.Tensor
    corrupted: torch.Tensor
    observed: torch.Tensor | None


def corrupt(task: Task, kind: str, clean: torch.Tensor, seed: int = CORRUPTION_SEED) -> Corrupted:
    """Corrupt ``clean`` with a mask kind (inpainting) or a noise kind (denoising).

    For inpainting the missing pixels of the corrupted images are 0, the chain's start.
    """
    if task == "inpaint":
        observed = make_mask(kind, clean.shape, seed=seed).to(clean.device)
        return Corrupted(clean, torch.where(observed, clean, torch.zeros_like(clean)), observed)
    if task == "denoise":
        return Corrupted(clean, add_noise(kind, clean, seed=seed), None)
    raise OptionError(f"unknown task {task!r}; tasks: inpaint, denoise")


def kinds_of(task: Task) -> dict[str, str]:
    """The corruption kinds of a task, with their descriptions."""
    return MASK_KINDS if task == "inpaint" else NOISE_KINDS


def _score(
    restored: torch.Tensor,
    clean: torch.Tensor,
    extractor: FeatureExtractor | None,
    clean_features: Any,
) -> dict[str, float]:
    values = ssim(restored, clean)
    row = {
        "ssim": round(values.mean().item(), 4),
        "ssim_sem": round(values.std().item() / math.sqrt(values.numel()), 4)
        if values.numel() > 1
        else 0.0,
    }
    if extractor is not None:
        row["fid"] = round(frechet_distance(features_of(extractor, restored), clean_features), 3)
    return row


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
    """Restore corrupted test images with every model x refiner and score them.

    Args:
        task: ``"inpaint"`` or ``"denoise"``.
        models: Models by name (backend name, or any label).
        refiners: Configured refiners by name (see :func:`~lvmtoolkit.tasks.gibbs_refiner`).
        images: ``(N, C, H, W)`` test images in [0, 1]; a model with ``binary_data`` (the
            default) gets them binarised with the fixed evaluation seed.
        kinds: Mask kinds (inpainting) or noise kinds (denoising).
        iterations: Gibbs iterations per chain.
        seed: Seed of the chains.
        extractor: FID feature extractor; None skips FID.
        record_every: Also score SSIM every this many iterations (0: only at the end).
        grid_rows: Keep this many images per kind for a figure (see :func:`grid_columns`).
        images_label: Which images these are, in words, for the protocol.
        log: Called with a progress line after each chain.

    Returns:
        A :class:`~lvmtoolkit.metrics.report.Report` of kind ``task`` whose results are
        ``{model: {kind: {"corrupted": row, refiner: row}}}``, where a row holds ``ssim``,
        ``ssim_sem``, ``fid`` (if scored), ``seconds``, ``ssim_by_iteration`` (if recorded),
        or ``error`` when that chain failed; ``extras["grid"]`` holds the kept images.
    """
    from lvmtoolkit.data import binarize_fixed

    available = kinds_of(task)
    unknown = [k for k in kinds if k not in available]
    if unknown:
        raise OptionError(
            f"unknown {task} kind {', '.join(unknown)}; kinds: {', '.join(available)}"
        )
    results: dict[str, Any] = {}
    grid: dict[str, Any] = {}
    for model_name, model in models.items():
        device = model.device
        binary = bool(getattr(model, "binary_data", True))
        clean = (binarize_fixed(images) if binary else images).to(device)
        clean_features = features_of(extractor, clean) if extractor is not None else None
        results[model_name] = {}
        for kind in kinds:
            data = corrupt(task, kind, clean)
            rows: dict[str, Any] = {
                "corrupted": _score(data.corrupted, clean, extractor, clean_features)
            }
            if grid_rows and kind not in grid:
                grid[kind] = {
                    "clean": clean[:grid_rows].cpu(),
                    "corrupted": data.corrupted[:grid_rows].cpu(),
                    "missing": None if data.observed is None else ~data.observed[:grid_rows].cpu(),
                    "restored": {},
                }
            for refiner_name, refiner in refiners.items():
                started = time.perf_counter()
                try:
                    if task == "inpaint":
                        result = inpaint(
                            model,
                            data.corrupted,
                            data.observed,
                            refiner,
                            iterations=iterations,
                            seed=seed,
                            record_every=record_every,
                        )
                    else:
                        result = denoise(
                            model,
                            data.corrupted,
                            refiner,
                            iterations=iterations,
                            seed=seed,
                            record_every=record_every,
                        )
                except LvmError as err:
                    rows[refiner_name] = {"error": str(err)}
                    if log is not None:
                        log(f"{model_name} {refiner_name} {kind}: failed: {err}")
                    continue
                row = _score(result.images, clean, extractor, clean_features)
                if record_every:
                    row["ssim_by_iteration"] = {
                        str(t): round(ssim(image, clean).mean().item(), 4)
                        for t, image in zip(result.recorded_at, result.trajectory, strict=True)
                    }
                row["seconds"] = round(time.perf_counter() - started, 1)
                rows[refiner_name] = row
                if grid_rows and kind in grid:
                    grid[kind]["restored"][f"{model_name} {refiner_name}"] = result.images[
                        :grid_rows
                    ].cpu()
                if log is not None:
                    fid_text = f", FID {row['fid']:.2f}" if "fid" in row else ""
                    log(
                        f"{model_name} {refiner_name} {kind}: SSIM {row['ssim']:.4f}"
                        f"{fid_text} ({row['seconds']} s)"
                    )
            results[model_name][kind] = rows
    protocol = {
        "images": images_label or f"{images.shape[0]} images",
        "kinds": {k: available[k] for k in kinds},
        "binarization": f"fixed Bernoulli draw, seed {EVAL_BINARIZATION_SEED}, for models "
        "of binary data",
        "corruption_seed": CORRUPTION_SEED,
        "iterations": iterations,
        "chain_seed": seed,
        "result": "likelihood mean at the last iteration in the unknown pixels",
        "per_iteration_defaults": GIBBS_REFINER_DEFAULTS,
        "ssim": "pytorch_msssim.ssim, single scale, 11x11 Gaussian window, data_range 1; "
        "mean over images (sem: its standard error)",
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


def gibbs_refiners(
    names: Sequence[str] | None, options: Mapping[str, Any] | None = None
) -> dict[str, Refiner]:
    """Registered refiners configured for the Gibbs loop, with options routed to them.

    An option ``"svi.lr"`` goes to the ``svi`` refiner only; a plain ``"steps"`` goes to
    every refiner that declares it (and to none that does not; an option no refiner takes
    is an error). Options not given take :data:`~lvmtoolkit.tasks.GIBBS_REFINER_DEFAULTS`.

    Args:
        names: Registered refiner names; None: every installed refiner.
        options: ``{"NAME.KEY" or "KEY": value}``, values typed or as strings.

    Returns:
        Configured refiners by name.

    Raises:
        OptionError: An option for a refiner that is not among ``names``, or one that none
            of them takes, or an invalid value.
    """
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
    return {name: gibbs_refiner(name, **per_refiner[name]) for name in names}


def grid_columns(
    grid: Mapping[str, Any],
) -> tuple[list[tuple[str, torch.Tensor]], torch.Tensor | None]:
    """Columns for :func:`lvmtoolkit.images.save_grid` from ``evaluate_task(...).extras["grid"]``.

    Rows are the kept images of every kind, one kind after the other; columns are the
    original, the corrupted input and each model x refiner's result (the paper's Figures
    6 and 7).
    """
    kinds = list(grid)
    if not kinds:
        raise LvmError("no images were kept for a grid")
    labels = list(dict.fromkeys(label for k in kinds for label in grid[k]["restored"]))

    def stack(get: Callable[[dict[str, Any]], torch.Tensor]) -> torch.Tensor:
        return torch.cat([get(grid[k]) for k in kinds])

    def restored(g: dict[str, Any], label: str) -> torch.Tensor:
        # A chain that failed shows as a grey cell.
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
