"""Optional FID and KID (torchmetrics, torch-fidelity) with Inception weights from a local file.

Nothing is downloaded: a missing file or package is bad input, found before any work (`check_fid_setup`).
"""

from pathlib import Path

import numpy as np
import torch

from common.report import BadInputError
from models.metrics import check_images


def check_fid_setup(weights: str | Path) -> None:
    """Fail fast, before any work, when FID/KID are asked for but cannot be computed."""
    _inception_metrics(Path(weights).expanduser())


def _inception_metrics(weights: Path):
    """torchmetrics' FID and KID classes, or a BadInputError that says how to get them."""
    if not weights.is_file():
        raise BadInputError(
            f"[export] inception_weights = {weights}: no such file. Point it at the FID Inception weights "
            "(torch-fidelity's weights-inception-2015-12-05-6726825d.pth, downloaded once by hand), "
            "or remove the key to skip FID/KID"
        )
    try:
        from torchmetrics.image.fid import FrechetInceptionDistance
        from torchmetrics.image.kid import KernelInceptionDistance
        from torchmetrics.utilities.imports import _TORCH_FIDELITY_AVAILABLE
    except ImportError as e:
        raise BadInputError(
            f"[export] inception_weights is set but torchmetrics is not installed ({e}); "
            "pip install 'faces-pipeline[fid]' (torchmetrics and torch-fidelity), or remove the key"
        ) from e
    if not _TORCH_FIDELITY_AVAILABLE:
        raise BadInputError(
            "[export] inception_weights is set but torch-fidelity is not installed; "
            "pip install 'faces-pipeline[fid]' (torchmetrics and torch-fidelity), or remove the key"
        )
    return FrechetInceptionDistance, KernelInceptionDistance


def fid_kid(
    real: np.ndarray, fake: np.ndarray, weights: str | Path, device: str = "cpu", batch: int = 64
) -> dict:
    """FID and KID (x1000) of generated against real images with Inception weights from a local file.

    Nothing is downloaded: the file must be there. Images are resized to 299 px inside the metric.
    """
    check_images(real, "real images")
    check_images(fake, "generated images")
    fid_cls, kid_cls = _inception_metrics(Path(weights).expanduser())
    try:
        fid = fid_cls(feature=2048, feature_extractor_weights_path=str(Path(weights).expanduser()))
    except Exception as e:  # a wrong or truncated file fails inside torch.load / load_state_dict
        raise BadInputError(
            f"[export] inception_weights = {weights}: could not load it as FID Inception weights ({e}); "
            "use torch-fidelity's weights-inception-2015-12-05-6726825d.pth"
        ) from e
    subset = min(1000, len(real), len(fake))
    kid = kid_cls(feature=fid.inception, subsets=100, subset_size=subset)
    fid, kid = fid.to(device), kid.to(device)
    with torch.no_grad():
        for images, is_real in ((real, True), (fake, False)):
            for start in range(0, len(images), batch):
                x = torch.from_numpy(np.ascontiguousarray(images[start : start + batch])).permute(0, 3, 1, 2)
                x = x.expand(-1, 3, -1, -1).to(device)  # grey images as RGB
                fid.update(x, real=is_real)
                kid.update(x, real=is_real)
        kid_mean, kid_std = kid.compute()
        return {
            "fid": float(fid.compute()),
            "kid_x1000": float(kid_mean) * 1e3,
            "kid_std_x1000": float(kid_std) * 1e3,
            "real_images": len(real),
            "generated_images": len(fake),
        }
