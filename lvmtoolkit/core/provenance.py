"""Which images a checkpoint was trained on, and whether an evaluation would score them.

A checkpoint's data description may list the image ranges it was trained on under
``"trained_on"``: ``[{"dataset": "mnist", "split": "test", "start": 1000, "stop": 10000}]``
(``start`` included, ``stop`` excluded, positions in the split as the dataset loads it).
`lvm train` records its train split; a script that trains on part of a test split records
that part. Restoration scored on images the model was trained on measures memory, not
restoration, and the number looks like any other: `scored_training_images` finds the
overlap so the evaluation can refuse it. The bundled checkpoints record mnist-5k's train
split. A checkpoint without the field (one written before it existed) records nothing and
is not checked.
"""

from __future__ import annotations

from typing import Any

from lvmtoolkit.errors import CheckpointError

TRAINED_ON = "trained_on"


def image_range(dataset: str, split: str, start: int, stop: int) -> dict[str, Any]:
    """One ``trained_on`` entry: images ``start`` to ``stop - 1`` of ``dataset``'s ``split``."""
    return {"dataset": dataset, "split": split, "start": int(start), "stop": int(stop)}


def trained_on(info: dict[str, Any], where: str = "checkpoint") -> list[dict[str, Any]]:
    """The checked ``trained_on`` entries of a checkpoint description (empty if absent).

    Raises:
        CheckpointError: The field is present but is not a list of well-formed ranges;
            a malformed record must not pass for "trained on nothing here".
    """
    data = info.get("data") if isinstance(info, dict) else None
    entries = data.get(TRAINED_ON, []) if isinstance(data, dict) else []
    if not isinstance(entries, list):
        raise CheckpointError(f"{where}: data.{TRAINED_ON} must be a list of image ranges")
    for entry in entries:
        ok = (
            isinstance(entry, dict)
            and isinstance(entry.get("dataset"), str)
            and isinstance(entry.get("split"), str)
            and all(
                isinstance(entry.get(k), int) and not isinstance(entry.get(k), bool)
                for k in ("start", "stop")
            )
            and 0 <= entry["start"] < entry["stop"]
        )
        if not ok:
            raise CheckpointError(
                f"{where}: data.{TRAINED_ON} entry {entry!r} is not "
                '{"dataset": str, "split": str, "start": int, "stop": int} with 0 <= start < stop'
            )
    return entries


def scored_training_images(
    info: dict[str, Any], dataset: str, split: str, count: int, where: str = "checkpoint"
) -> tuple[int, int] | None:
    """The images among the first ``count`` of ``dataset``'s ``split`` that the checkpoint
    described by ``info`` was trained on, as ``(first, last)`` positions, or None."""
    first, last = None, None
    for entry in trained_on(info, where):
        if entry["dataset"] != dataset or entry["split"] != split:
            continue
        low, high = entry["start"], min(entry["stop"], count)
        if low < high:
            first = low if first is None else min(first, low)
            last = high - 1 if last is None else max(last, high - 1)
    return None if first is None else (first, last)


def refuse_scoring_training_images(
    info: dict[str, Any] | None, dataset: str, split: str, count: int, where: str
) -> None:
    """Raise if the first ``count`` images of ``dataset``'s ``split`` were trained on.

    Raises:
        CheckpointError: One line naming the checkpoint, the split and the images.
    """
    if not info:
        return
    overlap = scored_training_images(info, dataset, split, count, where)
    if overlap is not None:
        first, last = overlap
        raise CheckpointError(
            f"{where} was trained on {dataset} {split} images {first}-{last}, which the first "
            f"{count} include: numbers on them would not be held-out ones; use fewer images "
            f"or another split"
        )


def refuse_held_out_overlap(
    info: dict[str, Any] | None, dataset: str, splits: list[str], count: int, where: str
) -> None:
    """`refuse_scoring_training_images` for every split but ``train``.

    For measurements reported on the train split by design (the paper's gaps on train and
    test, ``lvm refine``): a model scored on its own train split is expected there, but a
    "test" column holding images it was trained on is not.
    """
    for split in splits:
        if split != "train":
            refuse_scoring_training_images(info, dataset, split, count, where)
