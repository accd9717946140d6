"""Memorisation: each sample's nearest training crop by pixel distance, beside real crops' own distance.

A generator that copies its data gives samples much closer to a training crop than real crops are to
one another.
"""

import numpy as np
import torch

from common.report import BadInputError
from models.metrics import check_images


def nearest_neighbours(
    queries: np.ndarray, reference: np.ndarray, skip: np.ndarray | None = None, chunk: int = 4096
) -> tuple[np.ndarray, np.ndarray]:
    """For each query image, the index of the nearest reference image by pixel distance and that distance.

    The distance is the root mean square pixel difference on the 0..255 scale (0: identical).
    `reference` may be a memory-mapped images.npy; it is read in chunks. `skip[k]` is a reference row
    that query k must not match (itself, when the queries are taken from the reference).
    """
    q = torch.from_numpy(np.ascontiguousarray(queries)).reshape(len(queries), -1).double()
    q_sq = (q * q).sum(1, keepdim=True)
    best_d = torch.full((len(q),), float("inf"), dtype=torch.float64)
    best_i = torch.zeros(len(q), dtype=torch.long)
    for start in range(0, len(reference), chunk):
        r = torch.from_numpy(np.ascontiguousarray(reference[start : start + chunk]))
        r = r.reshape(len(r), -1).double()
        d2 = q_sq + (r * r).sum(1) - 2 * q @ r.T  # float64 keeps near-duplicates exact
        if skip is not None:
            inside = (skip >= start) & (skip < start + len(r))
            d2[np.flatnonzero(inside), skip[inside] - start] = float("inf")
        d, i = d2.min(dim=1)
        better = d < best_d
        best_d[better], best_i[better] = d[better], i[better] + start
    rms = torch.sqrt(best_d.clamp_min(0) / q.shape[1])
    return best_i.numpy(), rms.numpy()


def memorisation(samples: np.ndarray, training: np.ndarray, seed: int = 0) -> dict:
    """Nearest training crop of each sample, beside the same distance for real crops to the others.

    A generator that copies its data gives samples much closer to a training crop than real crops
    are to one another (`real_to_real_rms`, the median over as many random real crops).
    """
    check_images(samples, "generated images")
    check_images(np.asarray(training[:1]), "training images")  # may be a memmap or a lazy view
    if training[:1].shape[1:] != samples.shape[1:]:
        raise BadInputError(
            f"training images are {training[:1].shape[1:]} but generated ones {samples.shape[1:]}"
        )
    index, distance = nearest_neighbours(samples, training)
    result = {
        "nearest_index": index.tolist(),
        "nearest_rms": distance.tolist(),
        "median_rms": float(np.median(distance)),
        "real_to_real_rms": None,
    }
    n_ref = min(len(samples), len(training) - 1)
    if n_ref >= 1:
        picked = np.sort(np.random.default_rng(seed).choice(len(training), n_ref, replace=False))
        _, real_d = nearest_neighbours(training[picked], training, skip=picked)
        result["real_to_real_rms"] = float(np.median(real_d))
    return result
