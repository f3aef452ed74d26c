"""A VAE in one plain PyTorch file, refined from the command line without writing a plugin.

``build()`` is all ``lvm`` needs: it returns the networks wrapped in
`lvmtoolkit.TorchVAE`, with the weights in ``my_vae.safetensors`` next to this file
when that exists (else the fixed-seed initial weights). Run it from the repository root::

    python examples/my_vae.py train            # ~20 s: 5 epochs on mnist-5k -> my_vae.safetensors
    python examples/my_vae.py pngs runs/pngs   # 100 test digits as PNG files
    lvm refine --model examples/my_vae.py:build --data runs/pngs --steps 10,100 \\
        --output runs/my-vae-results
    python examples/my_vae.py show runs/my-vae-results   # load_results, score, decode

``lvm refine --model FILE.py:FUNCTION`` imports this file (running its code, as Python
would) and calls ``build()``.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
from torch import nn

import lvmtoolkit as lvm

WEIGHTS = Path(__file__).with_name("my_vae.safetensors")
LATENT = 8


def networks(seed: int = 0) -> tuple[nn.Module, nn.Module]:
    """Encoder (image -> stacked (mu, logvar)) and decoder (z -> Bernoulli logits)."""
    torch.manual_seed(seed)
    encoder = nn.Sequential(
        nn.Flatten(), nn.Linear(784, 256), nn.ReLU(), nn.Linear(256, 2 * LATENT)
    )
    decoder = nn.Sequential(
        nn.Linear(LATENT, 256), nn.ReLU(), nn.Linear(256, 784), nn.Unflatten(1, (1, 28, 28))
    )
    return encoder, decoder


def build() -> lvm.TorchVAE:
    """The model, as ``lvm refine --model my_vae.py:build`` loads it."""
    encoder, decoder = networks()
    model = lvm.TorchVAE(encoder, decoder, data_shape=(1, 28, 28), latent_shape=(LATENT,))
    if WEIGHTS.is_file():
        from safetensors.torch import load_file

        model.load_state_dict(load_file(WEIGHTS))
    return model.eval()


def train(epochs: int = 5) -> None:
    """Fit the VAE on the mnist-5k train split (dynamic binarisation), save the weights."""
    from safetensors.torch import save_file

    model = build().train()
    images = lvm.get_dataset("mnist-5k")().load("train").images
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    for epoch in range(epochs):
        for batch in images[torch.randperm(len(images))].split(100):
            loss = model.training_loss(lvm.binarize_dynamic(batch)).mean()
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        print(f"epoch {epoch + 1}: NELBO {loss.item():.1f}")
    save_file(model.state_dict(), WEIGHTS)
    print(f"wrote {WEIGHTS}")


def write_pngs(folder: Path, count: int = 100) -> None:
    """The first ``count`` mnist-5k test digits as 28x28 grey PNG files."""
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    images = lvm.get_dataset("mnist-5k")().load("test").images[:count]
    for i, image in enumerate(images):
        pixels = (image[0] * 255).round().to(torch.uint8).numpy()
        Image.fromarray(pixels, mode="L").save(folder / f"digit-{i:04d}.png")
    print(f"wrote {count} PNG files to {folder}")


def show(results_dir: Path) -> None:
    """Load the results, rescore the refined posteriors, decode them."""
    from pyro import poutine

    results = lvm.load_results(results_dir)
    x = results.data()
    print(f"{len(results)} datapoints; summary: {results.summary['results']}")
    nelbo = lvm.nelbo(results.model, results.posterior, x).mean()
    print(f"NELBO (16 samples) of the saved posteriors: {nelbo:.2f}")
    z = poutine.trace(results.posterior).get_trace(x).nodes["z"]["value"]
    means = results.model.decode({"z": z}).mean
    print(f"decoded one sample of each posterior: {tuple(means.shape)}")


if __name__ == "__main__":
    command, *rest = sys.argv[1:] or ["train"]
    if command == "train":
        train()
    elif command == "pngs":
        write_pngs(Path(rest[0] if rest else "runs/pngs"))
    elif command == "show":
        show(Path(rest[0] if rest else "runs/my-vae-results"))
    else:
        sys.exit(f"unknown command {command!r}; use train, pngs or show")
