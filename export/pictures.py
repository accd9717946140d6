"""What each picture of an export shows: which latents, which frames; `export.plots` draws them.

grid.png and samples/ (fixed noise), interpolation.png and .gif (spherical paths between latents),
training.gif (the run's fixed-noise grids over training) and training.png (losses and SWD over steps).
"""

from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from common.layout import list_grids
from export import inference, plots
from export.config import ExportConfig

GRID_SIDE = 8
INTERPOLATION_ROWS = 4  # pairs of latents in interpolation.png
GIF_IMAGES = 8  # images moving together in interpolation.gif
GIF_KEYFRAMES = 4  # latents each of them loops through
MAX_TRAINING_FRAMES = 100

Generator = Callable[[torch.Tensor], torch.Tensor]


def grid_latents(nz: int, seed: int) -> torch.Tensor:
    """The fixed noise of grid.png: the same grid on every export of the same generator."""
    return inference.latents(GRID_SIDE * GRID_SIDE, nz, seed)


def write_grid_and_samples(
    generator: Generator, grid_z: torch.Tensor, out: Path, config: ExportConfig, device: torch.device
) -> None:
    """grid.png from the generator; samples/ from the TorchScript file itself, as `faces sample` would."""
    grid = inference.generate(generator, grid_z, device)
    plots.save_png(out / "grid.png", plots.image_grid(grid, columns=GRID_SIDE))
    inference.sample(
        out / "generator.torchscript.pt", config.n_samples, config.seed + 1, out / "samples", device
    )


def interpolation_frames(
    generator: Generator, nz: int, steps: int, seed: int, device: torch.device
) -> tuple[np.ndarray, list[np.ndarray]]:
    """A strip per pair of latents (rows of `steps` images), and the frames of a looping GIF."""
    z = inference.latents(2 * INTERPOLATION_ROWS, nz, seed + 2)
    ts = np.linspace(0, 1, steps)
    strip = torch.cat(
        [
            torch.stack([inference.slerp(z[2 * r], z[2 * r + 1], t) for t in ts])
            for r in range(INTERPOLATION_ROWS)
        ]
    )
    strip_images = plots.image_grid(inference.generate(generator, strip, device), columns=steps)
    keys = inference.latents(GIF_KEYFRAMES * GIF_IMAGES, nz, seed + 3).view(GIF_KEYFRAMES, GIF_IMAGES, nz)
    path = [
        inference.slerp(keys[k], keys[(k + 1) % GIF_KEYFRAMES], t)
        for k in range(GIF_KEYFRAMES)
        for t in np.linspace(0, 1, steps, endpoint=False)
    ]
    images = inference.generate(generator, torch.cat(path), device)  # one batched pass for every frame
    frames = [plots.image_grid(chunk, GIF_IMAGES) for chunk in np.split(images, len(path))]
    return strip_images, frames


def write_interpolation(
    generator: Generator, nz: int, out: Path, config: ExportConfig, device: torch.device
) -> None:
    """interpolation.png (the strips) and interpolation.gif (the loop)."""
    strip, frames = interpolation_frames(generator, nz, config.interpolation_steps, config.seed, device)
    plots.save_png(out / "interpolation.png", strip)
    plots.save_gif(out / "interpolation.gif", frames, ms_per_frame=80)


def training_frames(run_dir: Path) -> list[np.ndarray]:
    """The run's fixed-noise grids in step order, captioned; at most MAX_TRAINING_FRAMES, evenly spaced."""
    from PIL import Image

    grids = list_grids(run_dir)
    if len(grids) > MAX_TRAINING_FRAMES:
        keep = np.unique(np.linspace(0, len(grids) - 1, MAX_TRAINING_FRAMES).round().astype(int))
        grids = [grids[k] for k in keep]
    frames = []
    for step, path in grids:
        try:
            with Image.open(path) as im:
                frames.append(plots.with_caption(np.asarray(im.convert("RGB")), f"step {step}"))
        except OSError:  # a grid cut short by a kill: leave it out
            continue
    return frames


def write_training_gif(run_dir: Path, out: Path, notes: list[str]) -> None:
    """training.gif from the run's grids; a run without any gets a note instead."""
    grids = training_frames(run_dir)
    if grids:
        plots.save_gif(out / "training.gif", grids, ms_per_frame=200, last_frame_ms=1500)
    else:
        notes.append(f"no fixed-noise grids in {run_dir / 'grids'}: training.gif not written")


def write_training_plot(run_dir: Path, swd_noise_floor: dict, out: Path) -> None:
    """training.png: the run's losses and SWD over steps, with the export's noise floor as a line."""
    plots.training_plot(
        plots.read_metrics(run_dir / "metrics.jsonl"),
        swd_noise_floor["mean"],
        swd_noise_floor["images"],
        out / "training.png",
    )
