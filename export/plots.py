"""Pictures for an export: image grids, GIFs, the training curves, the memorisation sheet.

Images here are uint8 (N, H, W, C) arrays, the layout of images.npy. Every file is written
atomically. Matplotlib is used through its Agg canvas directly, so no global backend is switched.
"""

import json
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from PIL import Image, ImageDraw

from common.files import atomic_write_with

PAD = 2  # pixels between tiles
BACKGROUND = 255


def to_pil(image: np.ndarray) -> Image.Image:
    return Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image)


def image_grid(images: np.ndarray, columns: int, pad: int = PAD) -> np.ndarray:
    """Tiles in rows of `columns`, separated by `pad` white pixels: (H', W', C) uint8."""
    n, h, w, c = images.shape
    rows = -(-n // columns)
    grid = np.full((rows * (h + pad) + pad, columns * (w + pad) + pad, c), BACKGROUND, np.uint8)
    for k, image in enumerate(images):
        y, x = pad + (k // columns) * (h + pad), pad + (k % columns) * (w + pad)
        grid[y : y + h, x : x + w] = image
    return grid


def save_png(path: Path, image: np.ndarray) -> Path:
    return atomic_write_with(path, lambda tmp: to_pil(image).save(tmp, format="PNG"))


def save_gif(
    path: Path, frames: list[np.ndarray], ms_per_frame: int = 100, last_frame_ms: int | None = None
) -> Path:
    """An endlessly looping GIF; `last_frame_ms` holds the final frame longer (a pause before the loop)."""
    # Fast octree palettes: Pillow's default (median cut) costs ~100x more per frame for the same look.
    pictures = [to_pil(f).convert("RGB").quantize(method=Image.Quantize.FASTOCTREE) for f in frames]
    durations = [ms_per_frame] * len(pictures)
    if last_frame_ms is not None:
        durations[-1] = last_frame_ms

    def write(tmp: Path) -> None:
        pictures[0].save(
            tmp,
            format="GIF",
            save_all=True,
            append_images=pictures[1:],
            duration=durations,
            loop=0,
            optimize=False,
        )

    return atomic_write_with(path, write)


def with_caption(image: np.ndarray, text: str, height: int = 14) -> np.ndarray:
    """The image with a white band of text above it (PIL's built-in bitmap font: no font files needed)."""
    band = Image.new("RGB", (image.shape[1], height), (255, 255, 255))
    ImageDraw.Draw(band).text((3, 1), text, fill=(0, 0, 0))
    rgb = image if image.shape[-1] == 3 else np.repeat(image, 3, axis=-1)
    return np.concatenate([np.asarray(band), rgb], axis=0)


def memorisation_sheet(
    samples: np.ndarray, nearest: np.ndarray, distances: list[float], pairs_per_row: int = 4
):
    """Each sample beside its nearest training crop, with the RMS pixel distance above the pair."""
    tiles = []
    for sample, match, d in zip(samples, nearest, distances, strict=True):
        pair = image_grid(np.stack([sample, match]), columns=2, pad=PAD)
        tiles.append(with_caption(pair, f"rms {d:.1f}"))
    sheet = image_grid(np.stack(tiles), columns=pairs_per_row, pad=3 * PAD)
    return with_caption(sheet, "generated | nearest training crop (pixel distance)", height=16)


def read_metrics(path: Path) -> list[dict]:
    """Rows of a run's metrics.jsonl; a line cut short by a kill is skipped."""
    rows = []
    if not path.is_file():
        return rows
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(row, dict) and "step" in row:
            rows.append(row)
    return rows


def _series(rows: list[dict], key: str) -> tuple[list[int], list[float]]:
    points = [(r["step"], r[key]) for r in rows if isinstance(r.get(key), int | float)]
    return [p[0] for p in points], [float(p[1]) for p in points]


def training_plot(rows: list[dict], noise_floor: float | None, floor_images: int, path: Path) -> Path:
    """Losses over steps, and SWD over steps with the real-vs-real noise floor drawn beside it."""
    fig = Figure(figsize=(10, 4), dpi=100)
    canvas = FigureCanvasAgg(fig)
    losses, quality = fig.subplots(1, 2)
    for key, label in (("loss_d", "discriminator"), ("loss_g", "generator")):
        steps, values = _series(rows, key)
        if steps:
            losses.plot(steps, values, label=label, linewidth=1)
    losses.set(title="Losses", xlabel="step", ylabel="loss")
    losses.legend(loc="best")
    steps, values = _series(rows, "swd")
    if steps:
        quality.plot(steps, values, marker="o", markersize=3, label="SWD generated vs real (mean, x1000)")
    if noise_floor is not None:
        quality.axhline(
            noise_floor,
            color="grey",
            linestyle="--",
            label=f"noise floor (real vs real, {floor_images} per side)",
        )
    quality.set(title="Sliced Wasserstein distance (lower is better)", xlabel="step")
    if steps or noise_floor is not None:
        quality.legend(loc="best", fontsize="small")
    else:
        quality.text(
            0.5, 0.5, "no SWD evaluations in metrics.jsonl", ha="center", transform=quality.transAxes
        )
    fig.tight_layout()

    def write(tmp: Path) -> None:
        canvas.print_png(str(tmp))

    return atomic_write_with(path, write)
