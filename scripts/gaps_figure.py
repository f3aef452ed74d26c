"""Draw docs/img/gaps.png: the inference gap and its two parts (Cremer et al., 2018).

Left: the three bounds on log p(x) and the gaps between them. Right: the same story in
latent space for a correlated Gaussian posterior, where everything is exact: the best
diagonal Gaussian q* (it matches the posterior's mean and its diagonal precision, the
optimum of KL(q || p) over diagonal Gaussians) and an encoder's q that is off in mean and
scale. The gap values in the left panel are computed from these distributions.

    python scripts/gaps_figure.py            # writes docs/img/gaps.png
"""

from __future__ import annotations

import argparse
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, no display needed
import matplotlib.pyplot as plt
import numpy as np
from matplotlib.patches import Ellipse

OUT = Path(__file__).parent.parent / "docs" / "img" / "gaps.png"

# The true posterior p(z | x): a correlated 2-D Gaussian.
MEAN = np.array([0.0, 0.0])
COV = np.array([[1.0, 0.8], [0.8, 1.0]])
# The encoder's amortized posterior: diagonal, off in mean, too wide in one direction.
Q_AMORTIZED = (np.array([0.7, -0.4]), np.array([0.75, 0.45]))


def kl_diag_to_full(mean: np.ndarray, std: np.ndarray) -> float:
    """KL(N(mean, diag(std^2)) || N(MEAN, COV)) in nats."""
    precision = np.linalg.inv(COV)
    diff = MEAN - mean
    return 0.5 * float(
        np.trace(precision @ np.diag(std**2))
        + diff @ precision @ diff
        - len(mean)
        + np.log(np.linalg.det(COV))
        - np.sum(np.log(std**2))
    )


def best_diagonal() -> tuple[np.ndarray, np.ndarray]:
    """argmin over diagonal Gaussians of KL(q || p): the mean, and 1/sqrt(diag precision)."""
    return MEAN.copy(), 1.0 / np.sqrt(np.diag(np.linalg.inv(COV)))


def ellipse(mean: np.ndarray, cov: np.ndarray, **style: object) -> Ellipse:
    """The 2-standard-deviation contour of N(mean, cov)."""
    values, vectors = np.linalg.eigh(cov)
    angle = np.degrees(np.arctan2(vectors[1, 1], vectors[0, 1]))
    width, height = 4 * np.sqrt(values[1]), 4 * np.sqrt(values[0])
    return Ellipse(tuple(mean), width, height, angle=angle, **style)


def draw(out: Path) -> None:
    q_star = best_diagonal()
    approximation = kl_diag_to_full(*q_star)  # log p(x) - L[q*]
    inference = kl_diag_to_full(*Q_AMORTIZED)  # log p(x) - L[q]
    amortization = inference - approximation  # L[q*] - L[q]

    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4.2), width_ratios=[1.1, 1])

    # Left: the bounds and the gaps, in nats below log p(x).
    levels = {
        r"$\log p(x)$": 0.0,
        r"$\mathcal{L}[q^*]$: best Gaussian": -approximation,
        r"$\mathcal{L}[q]$: encoder": -inference,
    }
    colours = ["black", "tab:blue", "tab:orange"]
    for (label, y), colour in zip(levels.items(), colours, strict=True):
        left.hlines(y, 0.3, 1.0, color=colour, lw=2.5)
        left.text(0.3, y + 0.04, label, va="bottom", fontsize=9.5, color=colour)

    def bracket(x: float, top: float, bottom: float, text: str, colour: str, side: str) -> None:
        left.annotate(
            "",
            xy=(x, bottom),
            xytext=(x, top),
            arrowprops={"arrowstyle": "<->", "color": colour, "lw": 1.5},
        )
        offset = -0.04 if side == "left" else 0.04
        left.text(
            x + offset, (top + bottom) / 2, text, ha="right" if side == "left" else "left",
            va="center", fontsize=9.5, color=colour,
        )  # fmt: skip

    bracket(
        1.08,
        0.0,
        -approximation,
        f"approximation gap\n{approximation:.2f} nats",
        "tab:blue",
        "right",
    )
    bracket(
        1.08, -approximation, -inference, f"amortization gap\n{amortization:.2f} nats",
        "tab:orange", "right",
    )  # fmt: skip
    bracket(0.22, 0.0, -inference, f"inference gap\n{inference:.2f} nats", "black", "left")
    left.set_xlim(-0.45, 1.75)
    left.set_ylim(-inference - 0.2, 0.35)
    left.set_xticks([])
    left.set_ylabel("nats below log p(x) (higher is better)")
    for side in ("top", "right", "bottom"):
        left.spines[side].set_visible(False)
    left.set_title("Gaps between the bounds")

    # Right: the distributions in latent space.
    right.add_patch(ellipse(MEAN, COV, fill=False, color="black", lw=2))
    right.add_patch(ellipse(q_star[0], np.diag(q_star[1] ** 2), fill=False, color="tab:blue", lw=2))
    right.add_patch(
        ellipse(
            Q_AMORTIZED[0],
            np.diag(Q_AMORTIZED[1] ** 2),
            fill=False,
            color="tab:orange",
            lw=2,
            ls="--",
        )
    )
    right.annotate(
        "",
        xy=tuple(q_star[0]),
        xytext=tuple(Q_AMORTIZED[0]),
        arrowprops={"arrowstyle": "->", "color": "tab:orange", "lw": 1.5},
    )
    right.text(-2.4, -2.35, "arrow: what the svi refiner does", fontsize=9, color="tab:orange")
    right.plot([], [], color="black", label=r"true posterior $p(z \mid x)$")
    right.plot([], [], color="tab:blue", label=r"$q^*$: best diagonal Gaussian")
    right.plot([], [], color="tab:orange", ls="--", label=r"$q$: the encoder's")
    right.legend(loc="upper left", fontsize=8.5, frameon=False)
    right.set_xlim(-2.6, 2.6)
    right.set_ylim(-2.6, 2.6)
    right.set_aspect("equal")
    right.set_xlabel("$z_1$")
    right.set_ylabel("$z_2$")
    right.set_title("The same in latent space (2 std contours)")

    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110, metadata={"Software": None})  # no version stamp: stable bytes
    plt.close(fig)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=OUT, help=f"PNG to write (default {OUT})")
    draw(parser.parse_args().out)
