"""What each stored run in docs/results/data/ is, and the command that wrote it.

Written by hand, one entry per JSON file, when a run is added: a short title, the results
page that shows it and the command as it was run (``{out}`` stands for the file's path).
``scripts/results_pages.py`` builds the data index from these entries and the files
themselves (commit, digest, model hash), and refuses a file without an entry, an entry
without a file, and an ``lvm evaluate``, ``lvm gaps`` or paired-difference command that
disagrees with what its run recorded (backends, refiners, methods, kinds, images,
checkpoints).

Most commands come from the pages' command blocks. The runs themselves record neither
their command nor their thread count; where a page gave no command, ``note`` says how the
command was reconstructed.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Run:
    """One stored run: its file in docs/results/data/, what it is, and how it was made.

    Attributes:
        file: the JSON file's name.
        title: a short title for the index.
        page: the results page that shows it (a file name in docs/results/).
        command: the command that wrote it, ``{out}`` standing for the file's path.
        note: anything a reader needs to rerun it that the command does not say.
    """

    file: str
    title: str
    page: str
    command: str
    note: str = ""


# The protocol's shared options: the official MNIST test set, 2 or 1 threads, JSON out.
OFFICIAL = "--dataset mnist --data-dir ../shared/data/mnist --split test"
D2 = f"{OFFICIAL} --threads 2 --json > {{out}}"
D1 = f"{OFFICIAL} --threads 1 --json > {{out}}"
BIG = "--batch-size 250"  # the 1,000-digit NVAE runs; the batch size changes memory only
GAUSS = "--noise gaussian:variance=0.5"
SALT = "--noise salt-pepper:rate=0.2"
BOTH_NOISES = "--noise gaussian:variance=0.5,salt-pepper:rate=0.2"
MASKS = "--masks centre,half"
CONDITIONAL = "--method conditional"
PAIRED = "python scripts/paired_refiner_difference.py"
PAIRED_OFFICIAL = "--dataset mnist --data-dir ../shared/data/mnist"
OLD_CLI = (
    "Made with the CLI of its commit, where `lvm evaluate` ran the paper's chain for every "
    "installed refiner; today's `lvm evaluate` runs conditional inference unless given "
    "`--method pseudo-gibbs`, and refiner defaults have changed since."
)
RESTORATION = "restoration.md"


def _evaluate(task: str, backend: str, refiners: str, method: str, kinds: str, rest: str) -> str:
    return f"lvm evaluate {task} --backend {backend} --refiner {refiners} {method} {kinds} {rest}"


RUNS: list[Run] = [
    # recipes.md
    Run(
        "natural-gradient.json",
        "svi-natural against Adam: the amortization gap closed at 1-50 model passes, VAE and GMVAE",
        "recipes.md",
        "python benchmarks/natural_gradient.py --backends vae,gmvae --num 1000 "
        "--data-dir ../shared/data/mnist --threads 2 --json {out}",
    ),
    # paper-tables.md
    Run(
        "paper-tables.json",
        "Tables 1 and 2: NELBO after 1-1,000 svi steps, VAE and GMVAE, paper and default recipe",
        "paper-tables.md",
        "python examples/reproduce_paper.py --data-dir ../shared/data/mnist --num-train 1000 "
        "--num-test 2000 --threads 1 --out docs/results/data/paper-tables && "
        "mv docs/results/data/paper-tables.png docs/results/paper-tables.png",
        "The example writes PREFIX.json and PREFIX.png; the figure lives beside the page.",
    ),
    # gaps.md
    *(
        Run(
            f"gaps-ais-{backend}.json",
            f"Inference gaps of `{backend}` with AIS and BDMC, first {num} official test digits",
            "gaps.md",
            f"lvm gaps --backend {backend} --dataset mnist --data-dir ../shared/data/mnist "
            f"--num-images {num} {extra}--iwae-samples 5000 --log-px ais {bdmc}--threads 2 "
            "--json > {out}",
        )
        for backend, num, extra, bdmc in (
            ("vae", 500, "", ""),
            ("gmvae", 500, "", ""),
            ("nvae", 50, "--max-steps 1000 ", "--bdmc-datapoints 20 "),
            ("nvae-flow", 50, "--max-steps 1000 ", "--bdmc-datapoints 20 "),
        )
    ),
    # inpainting.md: the pseudo-Gibbs chain of the first evaluation (mnist-5k test digits)
    Run(
        "inpainting.json",
        "The paper's chain, inpainting (centre, half, random), vae and gmvae, 100 mnist-5k digits",
        "inpainting.md",
        "lvm evaluate inpaint --num-images 100 --threads 1 --record-every 10 "
        "--grid docs/results/inpainting-grid.png --json > {out}",
        OLD_CLI,
    ),
    Run(
        "denoising.json",
        "The paper's chain, denoising after 100 iterations, vae and gmvae, 100 mnist-5k digits",
        "inpainting.md",
        "lvm evaluate denoise --num-images 100 --threads 1 --record-every 1 "
        "--grid docs/results/denoising-grid.png --json > {out}",
        OLD_CLI,
    ),
    Run(
        "denoising-1-iteration.json",
        "The paper's chain, denoising after 1 iteration, vae and gmvae, 100 mnist-5k digits",
        "inpainting.md",
        "lvm evaluate denoise --num-images 100 --threads 1 --iterations 1 "
        "--grid docs/results/denoising-grid-1-iteration.png --json > {out}",
        OLD_CLI,
    ),
    # restoration.md: Table 3, VAE and GMVAE (first 1,000 official test digits)
    Run(
        "restoration-denoise-vae.json",
        "VAE denoising, every method and refiner, first 1,000 digits",
        RESTORATION,
        _evaluate(
            "denoise",
            "vae",
            "amortized,svi,svi-flow",
            "--method conditional,importance,mwg,pseudo-gibbs",
            BOTH_NOISES,
            f"--num-images 1000 --grid docs/results/restoration-denoise-vae.png {D2}",
        ),
    ),
    Run(
        "restoration-denoise-gmvae.json",
        "GMVAE denoising, conditional, first 1,000 digits",
        RESTORATION,
        _evaluate(
            "denoise",
            "gmvae",
            "amortized,svi,svi-flow",
            CONDITIONAL,
            BOTH_NOISES,
            f"--num-images 1000 {D2}",
        ),
    ),
    Run(
        "restoration-inpaint-vae.json",
        "VAE inpainting, conditional, first 1,000 digits",
        RESTORATION,
        _evaluate(
            "inpaint",
            "vae",
            "amortized,svi,svi-flow",
            CONDITIONAL,
            MASKS,
            f"--num-images 1000 --grid docs/results/restoration-inpaint-vae.png {D2}",
        ),
    ),
    Run(
        "restoration-inpaint-vae-methods.json",
        "VAE inpainting, importance, MwG and the chain (svi), first 1,000 digits",
        RESTORATION,
        _evaluate(
            "inpaint",
            "vae",
            "svi",
            "--method importance,mwg,pseudo-gibbs",
            MASKS,
            f"--num-images 1000 {D2}",
        ),
    ),
    Run(
        "restoration-inpaint-gmvae.json",
        "GMVAE inpainting, conditional and the chain (amortized, svi), first 1,000 digits",
        RESTORATION,
        _evaluate(
            "inpaint",
            "gmvae",
            "amortized,svi",
            "--method conditional,pseudo-gibbs",
            MASKS,
            f"--num-images 1000 {D2}",
        ),
    ),
    Run(
        "restoration-denoise-gmvae-methods.json",
        "GMVAE denoising, importance, MwG and the chain, first 1,000 digits",
        RESTORATION,
        _evaluate(
            "denoise",
            "gmvae",
            "amortized,svi,svi-flow",
            "--method importance,mwg,pseudo-gibbs",
            BOTH_NOISES,
            f"--num-images 1000 {D1}",
        ),
    ),
    Run(
        "restoration-inpaint-gmvae-svi-flow.json",
        "GMVAE inpainting, conditional svi-flow, first 1,000 digits",
        RESTORATION,
        _evaluate("inpaint", "gmvae", "svi-flow", CONDITIONAL, MASKS, f"--num-images 1000 {D1}"),
    ),
    Run(
        "restoration-inpaint-gmvae-methods.json",
        "GMVAE inpainting, importance and MwG (svi), first 1,000 digits",
        RESTORATION,
        _evaluate(
            "inpaint", "gmvae", "svi", "--method importance,mwg", MASKS, f"--num-images 1000 {D1}"
        ),
    ),
    # restoration.md: Table 3, the NVAEs (each run on 1 thread, two at a time)
    *(
        Run(
            f"restoration-{task}-{backend}{suffix}.json",
            f"{backend} {title}",
            RESTORATION,
            _evaluate(task, backend, refiners, method, kinds, rest),
        )
        for backend in ("nvae", "nvae-flow")
        for task, suffix, title, refiners, method, kinds, rest in (
            (
                "denoise",
                "",
                "Gaussian denoising, conditional, first 200 digits",
                "amortized,svi,svi-flow",
                CONDITIONAL,
                GAUSS,
                f"--num-images 200 {D1}",
            ),
            (
                "denoise",
                "-salt-pepper",
                "salt-and-pepper denoising, conditional, first 200",
                "amortized,svi,svi-flow",
                CONDITIONAL,
                SALT,
                f"--num-images 200 {D1}",
            ),
            (
                "denoise",
                "-salt-pepper-1000",
                "salt-and-pepper denoising, conditional, first 1,000 digits",
                "amortized,svi,svi-flow",
                CONDITIONAL,
                SALT,
                f"--num-images 1000 {BIG} {D1}",
            ),
            (
                "inpaint",
                "",
                "inpainting, conditional (amortized, svi), first 200 digits",
                "amortized,svi",
                CONDITIONAL,
                MASKS,
                f"--num-images 200 {D1}",
            ),
            (
                "inpaint",
                "-1000",
                "inpainting, conditional (amortized, svi), first 1,000",
                "amortized,svi",
                CONDITIONAL,
                MASKS,
                f"--num-images 1000 {BIG} {D1}",
            ),
            (
                "inpaint",
                "-svi-flow",
                "inpainting, conditional svi-flow, first 200 digits",
                "svi-flow",
                CONDITIONAL,
                MASKS,
                f"--num-images 200 {D1}",
            ),
            (
                "denoise",
                "-methods",
                "Gaussian denoising, importance and MwG (svi), first 200",
                "svi",
                "--method importance,mwg",
                GAUSS,
                f"--num-images 200 {D1}",
            ),
            (
                "denoise",
                "-chain",
                "denoising, the paper's chain (svi), first 200 digits",
                "svi",
                "--method pseudo-gibbs",
                BOTH_NOISES,
                f"--num-images 200 {D1}",
            ),
        )
    ),
    Run(
        "restoration-denoise-nvae-1000.json",
        "nvae Gaussian denoising, conditional, first 1,000 digits",
        RESTORATION,
        _evaluate(
            "denoise",
            "nvae",
            "amortized,svi,svi-flow",
            CONDITIONAL,
            GAUSS,
            f"--num-images 1000 {BIG} {D1}",
        ),
    ),
    Run(
        "restoration-denoise-nvae-flow-1000.json",
        "nvae-flow Gaussian denoising, conditional (amortized, svi), first 1,000 digits",
        RESTORATION,
        _evaluate(
            "denoise",
            "nvae-flow",
            "amortized,svi",
            CONDITIONAL,
            GAUSS,
            f"--num-images 1000 {BIG} {D1}",
        ),
    ),
    Run(
        "restoration-denoise-nvae-flow-svi-flow-1000.json",
        "nvae-flow Gaussian denoising, conditional svi-flow, first 1,000 digits",
        RESTORATION,
        _evaluate(
            "denoise", "nvae-flow", "svi-flow", CONDITIONAL, GAUSS, f"--num-images 1000 {BIG} {D1}"
        ),
    ),
    Run(
        "restoration-inpaint-nvae-chain.json",
        "nvae inpainting, the paper's chain (svi), first 200 digits",
        RESTORATION,
        _evaluate(
            "inpaint", "nvae", "svi", "--method pseudo-gibbs", MASKS, f"--num-images 200 {D1}"
        ),
    ),
    Run(
        "restoration-inpaint-nvae-methods.json",
        "nvae inpainting, importance and MwG (svi), first 200 digits",
        RESTORATION,
        _evaluate(
            "inpaint", "nvae", "svi", "--method importance,mwg", MASKS, f"--num-images 200 {D1}"
        ),
    ),
    Run(
        "restoration-inpaint-nvae-flow-methods.json",
        "nvae-flow inpainting, importance, MwG and the chain (svi), first 200 digits",
        RESTORATION,
        _evaluate(
            "inpaint",
            "nvae-flow",
            "svi",
            "--method importance,mwg,pseudo-gibbs",
            MASKS,
            f"--num-images 200 {D1}",
        ),
    ),
    Run(
        "restoration-denoise-nvae-salt-pepper-methods.json",
        "nvae salt-and-pepper denoising, importance and MwG (svi), first 200 digits",
        RESTORATION,
        _evaluate(
            "denoise", "nvae", "svi", "--method importance,mwg", SALT, f"--num-images 200 {D1}"
        ),
    ),
    # restoration.md: other nvae-flow checkpoints (not bundled)
    *(
        Run(
            f"restoration-denoise-nvae-flow-{name}.json",
            f"nvae-flow {what}, Gaussian denoising, conditional, first 200 digits",
            RESTORATION,
            _evaluate(
                "denoise",
                f"nvae-flow --checkpoint nvae-flow=runs/nvae-flow-{name}",
                refiners,
                CONDITIONAL,
                GAUSS,
                f"--num-images 200 {D1}",
            ),
        )
        for name, what, refiners in (
            ("150-epochs", "trained 150 epochs", "svi,amortized,svi-flow"),
            ("300-epochs", "trained 300 epochs", "svi,amortized,svi-flow"),
            ("13k", "trained on 13,000 digits", "amortized,svi,svi-flow"),
        )
    ),
    *(
        Run(
            f"restoration-denoise-nvae-flow-{name}-1000.json",
            f"nvae-flow {what}, Gaussian denoising, conditional svi, first 1,000 digits",
            RESTORATION,
            _evaluate(
                "denoise",
                f"nvae-flow --checkpoint nvae-flow=runs/nvae-flow-{name}",
                "svi",
                CONDITIONAL,
                GAUSS,
                f"--num-images 1000 {BIG} {D1}",
            ),
        )
        for name, what in (
            ("150-epochs", "trained 150 epochs"),
            ("13k", "trained on 13,000 digits"),
        )
    ),
    Run(
        "longer-training-nvae-flow-1000-steps.json",
        "nvae-flow trained 150 epochs, svi with 1,000 steps and 128 draws, first 200 digits",
        RESTORATION,
        _evaluate(
            "denoise",
            "nvae-flow --checkpoint nvae-flow=runs/nvae-flow-150-epochs",
            "svi",
            CONDITIONAL,
            GAUSS,
            f"-o steps=1000 --samples 128 --num-images 200 {D1}",
        ),
    ),
    Run(
        "training-more-digits-vae.json",
        "VAE trained on 13,000 digits, Gaussian denoising, conditional svi, first 200 digits",
        RESTORATION,
        "python scripts/train_on_more_digits.py --data-dir ../shared/data/mnist --backend vae "
        "--epochs 100 --threads 1 -o runs/vae-13k && "
        + _evaluate(
            "denoise",
            "vae --checkpoint vae=runs/vae-13k",
            "svi",
            CONDITIONAL,
            GAUSS,
            f"--num-images 200 {D1}",
        ),
        "The page gave the training command only; the evaluation is reconstructed from the "
        "run's record (backend, checkpoint, refiner, method, noise, images; not its threads).",
    ),
    # restoration.md: paired per-image differences
    Run(
        "paired-gradient-nvae-heldout.json",
        "Paired: svi's reparameterised minus sticking-the-landing gradients, nvae, 200 held-out",
        RESTORATION,
        f"{PAIRED} --backend nvae --dataset mnist-5k --kind gaussian:variance=0.5 "
        "--a gradient=stl --b gradient=reparam --num 200 --json {out}",
    ),
    Run(
        "paired-longer-training-nvae-flow.json",
        "Paired: nvae-flow trained 150 epochs minus the bundled one, svi, first 200 digits",
        RESTORATION,
        f"{PAIRED} --backend nvae-flow {PAIRED_OFFICIAL} "
        "--checkpoint-b runs/nvae-flow-150-epochs --num 200 --json {out}",
    ),
    Run(
        "paired-longer-training-300-vs-150-nvae-flow.json",
        "Paired: nvae-flow trained 300 minus 150 epochs, svi, first 200 digits",
        RESTORATION,
        f"{PAIRED} --backend nvae-flow {PAIRED_OFFICIAL} --checkpoint runs/nvae-flow-150-epochs "
        "--checkpoint-b runs/nvae-flow-300-epochs --num 200 --json {out}",
    ),
    Run(
        "paired-more-digits-13k-vs-bundled-nvae-flow.json",
        "Paired: nvae-flow trained on 13,000 digits minus the bundled one, svi, first 200",
        RESTORATION,
        f"{PAIRED} --backend nvae-flow {PAIRED_OFFICIAL} --checkpoint-b runs/nvae-flow-13k "
        "--num 200 --json {out}",
    ),
    # restoration.md: studies
    Run(
        "training-size-vae.json",
        "Training-size study: the VAE trained on 500-4,000 digits, Gaussian denoising",
        RESTORATION,
        "python scripts/training_size_study.py --data-dir ../shared/data/mnist "
        "--sizes 500,1000,2000,4000 --num-images 200 | tail -n 1 > {out}",
        "The script prints a line per size, then the summary that is stored.",
    ),
    Run(
        "training-size-nvae-flow.json",
        "Training-size study: nvae-flow trained on 2,000 digits, Gaussian denoising",
        RESTORATION,
        "python scripts/training_size_study.py --data-dir ../shared/data/mnist "
        "--backend nvae-flow --sizes 2000 --epochs 75 --num-images 200 | tail -n 1 > {out}",
        "The script prints a line per size, then the summary that is stored.",
    ),
    Run(
        "restoration-defaults-vae.json",
        "Defaults study: VAE restoration settings on 200 held-out mnist-5k digits",
        RESTORATION,
        "python benchmarks/restoration_defaults.py --backend vae --num 200 --threads 1 "
        "--json {out}",
    ),
]
