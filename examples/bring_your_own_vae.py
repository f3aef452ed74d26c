"""Bring your own VAE: a convolutional VAE trained in plain PyTorch, then refined and inpainted.

The first half is ordinary PyTorch code that knows nothing about lvmtoolkit: a small
convolutional VAE whose encoder returns ``(mu, logvar)`` and whose decoder returns logits,
trained for a few seconds with the usual BCE + KL loss (Adam, lr 3e-3). The second half
wraps it with `lvmtoolkit.TorchVAE` (one call) and uses the toolkit on it:
per-datapoint SVI refinement of the posterior, and Gibbs inpainting of the lower half of
test digits.

Run it (about 15 s on one CPU thread)::

    python examples/bring_your_own_vae.py
    python examples/bring_your_own_vae.py --epochs 30 --out runs/byo   # longer, with a PNG

It prints one JSON object on stdout (NELBO before/after refinement, inpainting accuracy).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F

import lvmtoolkit as lvm
from lvmtoolkit.data import binarize_dynamic, binarize_fixed

# --- your model: plain PyTorch, any architecture ------------------------------------------


class ConvEncoder(nn.Module):
    """28x28 image -> (mu, logvar) of a 16-dimensional Gaussian."""

    def __init__(self, latent_dim: int = 16):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 16, 4, stride=2, padding=1),  # 14x14
            nn.ReLU(),
            nn.Conv2d(16, 32, 4, stride=2, padding=1),  # 7x7
            nn.ReLU(),
            nn.Flatten(),
        )
        self.mu = nn.Linear(32 * 7 * 7, latent_dim)
        self.logvar = nn.Linear(32 * 7 * 7, latent_dim)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.features(x)
        return self.mu(h), self.logvar(h)


class ConvDecoder(nn.Module):
    """16-dimensional z -> Bernoulli logits of a 28x28 image."""

    def __init__(self, latent_dim: int = 16):
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(latent_dim, 32 * 7 * 7),
            nn.ReLU(),
            nn.Unflatten(1, (32, 7, 7)),
            nn.ConvTranspose2d(32, 16, 4, stride=2, padding=1),  # 14x14
            nn.ReLU(),
            nn.ConvTranspose2d(16, 1, 4, stride=2, padding=1),  # 28x28
        )

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(z)


def train_plain_pytorch(
    encoder: ConvEncoder, decoder: ConvDecoder, images: torch.Tensor, epochs: int
) -> float:
    """The textbook VAE loop (BCE + analytic KL, Adam); returns the last epoch's mean loss."""
    params = [*encoder.parameters(), *decoder.parameters()]
    optimizer = torch.optim.Adam(params, lr=3e-3)
    mean_loss = float("nan")
    for _ in range(epochs):
        total = 0.0
        for batch in images[torch.randperm(len(images))].split(100):
            x = binarize_dynamic(batch)
            mu, logvar = encoder(x)
            z = mu + (0.5 * logvar).exp() * torch.randn_like(mu)
            bce = F.binary_cross_entropy_with_logits(decoder(z), x, reduction="sum")
            kl = -0.5 * (1 + logvar - mu.pow(2) - logvar.exp()).sum()
            loss = (bce + kl) / len(x)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            total += loss.item() * len(x)
        mean_loss = total / len(images)
    return mean_loss


# --- the toolkit on it ---------------------------------------------------------------------


def main(
    epochs: int = 8,
    train_images: int = 4000,
    test_images: int = 100,
    steps: int = 100,
    iterations: int = 20,
    out: Path | None = None,
) -> dict[str, float]:
    """Train the conv VAE, wrap it, refine and inpaint; return the numbers printed."""
    torch.manual_seed(0)
    data = lvm.get_dataset("mnist-5k")()
    encoder, decoder = ConvEncoder(), ConvDecoder()
    started = time.perf_counter()
    train_loss = train_plain_pytorch(
        encoder, decoder, data.load("train").images[:train_images], epochs
    )
    seconds = time.perf_counter() - started

    # One call makes it a toolkit model: every refiner and task accepts it.
    model = lvm.TorchVAE(
        encoder,
        decoder,
        data_shape=(1, 28, 28),
        latent_shape=(16,),
        likelihood="bernoulli",  # the decoder returns logits
        encoder_scale="logvar",  # the encoder returns (mu, logvar)
    ).eval()

    x = binarize_fixed(data.load("test").images[:test_images])
    refined = lvm.get_refiner("svi")(steps=steps, lr=1e-2).refine(model, x)
    before = lvm.nelbo(model, model.amortized_posterior(), x, num_samples=16).mean().item()
    after = lvm.nelbo(model, refined.posterior, x, num_samples=16).mean().item()

    from lvmtoolkit.tasks import inpaint

    observed = torch.ones_like(x, dtype=torch.bool)
    observed[..., 14:, :] = False  # the lower half of every digit is unknown
    filled = inpaint(
        model,
        x[:16],
        observed[:16],
        lvm.get_refiner("svi")(steps=5, lr=1e-2),
        iterations=iterations,
    )
    hidden = ~observed[:16]
    accuracy = ((filled.images[:16] > 0.5) == (x[:16] > 0.5))[hidden].float().mean().item()
    if out is not None:
        from torchvision.utils import save_image

        out.mkdir(parents=True, exist_ok=True)
        shown = torch.where(observed[:16], x[:16], torch.full_like(x[:16], 0.5))
        save_image(torch.cat([x[:16], shown, filled.images]), out / "inpainting.png", nrow=16)

    return {
        "train_seconds": round(seconds, 1),
        "train_loss": round(train_loss, 2),
        "nelbo_amortized": round(before, 2),
        f"nelbo_svi_{steps}_steps": round(after, 2),
        "inpainted_pixel_accuracy": round(accuracy, 4),
    }


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=8, help="training epochs (default 8)")
    parser.add_argument("--train-images", type=int, default=4000, help="default 4000")
    parser.add_argument("--test-images", type=int, default=100, help="default 100")
    parser.add_argument("--steps", type=int, default=100, help="svi steps (default 100)")
    parser.add_argument("--iterations", type=int, default=20, help="Gibbs iterations (default 20)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    parser.add_argument("--out", type=Path, default=None, help="folder for inpainting.png")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    result = main(
        args.epochs, args.train_images, args.test_images, args.steps, args.iterations, args.out
    )
    print(json.dumps(result, indent=2))
