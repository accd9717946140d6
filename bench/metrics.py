"""How long the export metrics take on the CPU: SWD (as the training loop calls it), MS-SSIM, memorisation.

    python bench/metrics.py [--threads N]

Real face crops from ../shared/data/photos (204 portraits), repeated with flips and small shifts to
make larger sets. Prints wall and CPU seconds per call.
"""

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.photos import face_crops  # noqa: E402
from models.memorisation import memorisation  # noqa: E402
from models.metrics import sliced_wasserstein, swd_noise_floor  # noqa: E402
from models.ms_ssim import ms_ssim_diversity  # noqa: E402


def enlarged(crops: np.ndarray, n: int, seed: int = 0) -> np.ndarray:
    """n images from the crops: random flips and shifts of up to 2 px, so copies are not identical."""
    rng = np.random.default_rng(seed)
    picks = crops[rng.integers(0, len(crops), n)]
    out = np.empty_like(picks)
    for k, image in enumerate(picks):
        image = image[:, ::-1] if rng.random() < 0.5 else image
        out[k] = np.roll(image, tuple(rng.integers(-2, 3, 2)), axis=(0, 1))
    return out


def timed(label: str, fn) -> object:
    wall, cpu = time.perf_counter(), time.process_time()
    result = fn()
    print(f"{label:<52} {time.perf_counter() - wall:7.2f} s wall {time.process_time() - cpu:7.2f} s cpu")
    return result


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"torch threads: {torch.get_num_threads()}")
    crops = face_crops(size=64)  # one per photo: 204
    floor = timed("SWD noise floor, 204 crops (102 per half), 64 px", lambda: swd_noise_floor(crops))
    print(f"  levels {[round(v, 1) for v in floor['levels']]} mean {floor['mean']:.1f}")
    for n in (256, 1024):
        a, b = enlarged(crops, n, seed=1), enlarged(crops, n, seed=2)
        timed(f"SWD {n} vs {n} images, 64 px", lambda a=a, b=b: sliced_wasserstein(a, b))
    timed("MS-SSIM diversity, 64 images (2016 pairs), 64 px", lambda: ms_ssim_diversity(crops[:64]))
    training = enlarged(crops, 20_000, seed=3)
    timed("memorisation, 16 samples vs 20000 crops, 64 px", lambda: memorisation(crops[:16], training))


if __name__ == "__main__":
    main()
