"""``lvm sample-grid``: draw images from a backend's prior and save them as one PNG."""

from __future__ import annotations

import click


@click.command(name="sample-grid")
@click.option("--backend", default="conv-vae", show_default=True, help="Model backend.")
@click.option(
    "--checkpoint",
    type=click.Path(exists=True),
    default=None,
    help="Checkpoint folder. Default: the backend's bundled one.",
)
@click.option("-n", "--num", type=click.IntRange(1, 1024), default=64, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the prior draws.")
@click.option(
    "-o", "--output", type=click.Path(dir_okay=False), required=True, help="PNG file to write."
)
def sample_grid(backend: str, checkpoint: str | None, num: int, seed: int, output: str) -> None:
    """Draw NUM images from the prior of a backend and save them as a PNG grid.

    Each image is the likelihood mean E[x | z] for z drawn from the prior.

    \b
    Example:
      lvm sample-grid --backend conv-vae -n 64 -o samples.png
    """
    import torch
    from torchvision.utils import save_image

    import lvmtoolkit as lvm

    model_class = lvm.get_backend(backend)
    path = checkpoint or model_class.default_checkpoint()
    if path is None:
        raise click.UsageError(f"backend {backend!r} ships no checkpoint; pass --checkpoint")
    model = lvm.load_checkpoint(path, backend=backend)
    torch.manual_seed(seed)
    with torch.no_grad():
        images = model.decode(model.sample_prior(num)).mean
    try:
        save_image(images, output, nrow=int(num**0.5))
    except OSError as err:  # e.g. a folder that does not exist: one line, no traceback
        raise click.FileError(output, hint=err.strerror or str(err)) from None
    click.echo(f"wrote {num} samples to {output}", err=True)
