"""Sampling from an exported generator: `faces sample --model PATH -n 64 --seed 1 --out DIR`.

An export holds the generator twice (docs/export.md):
- `generator.torchscript.pt`: TorchScript, runs with plain PyTorch and none of this project's code;
  its settings (latent size, image size) ride along as the extra file `faces.json`.
- `generator.pt`: a dict of plain data (`torch.load(path, weights_only=True)`): the EMA generator's
  state dict and the training config, rebuilt with models.dcgan.build_generator.
Either file gives the same images for the same seed: the latents are drawn on the CPU from
torch.Generator().manual_seed(seed), whatever device then runs the network.
"""

import json
import warnings
import zipfile
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch
from torch import nn

from common.config import MAX_SEED
from common.files import atomic_write_with
from common.report import BadInputError

WEIGHTS_FORMAT = "faces-generator"
EXTRA_FILE = "faces.json"  # the TorchScript archive's settings
BATCH = 256


@contextmanager
def _quiet_jit():
    """torch.jit warns that it is deprecated on every call; TorchScript is still what runs without Python
    classes of ours, so the warning would only be noise for users."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=FutureWarning, module=r"torch\.jit")
        yield


def is_torchscript(path: Path) -> bool:
    """TorchScript archives hold compiled code (`<name>/code/...`); torch.save files do not."""
    try:
        with zipfile.ZipFile(path) as z:
            return any("/code/" in name for name in z.namelist())
    except zipfile.BadZipFile:
        return False


def save_torchscript(generator: nn.Module, nz: int, info: dict, path: Path) -> Path:
    """Trace the generator (eval mode) and save it with its settings; works for any batch size."""
    generator = generator.eval()
    example = torch.zeros(2, nz)
    extra = {EXTRA_FILE: json.dumps({"nz": nz, **info}, sort_keys=True)}
    with torch.no_grad(), _quiet_jit():
        traced = torch.jit.trace(generator, example, check_trace=False)  # export compares it itself
        return atomic_write_with(path, lambda tmp: torch.jit.save(traced, str(tmp), _extra_files=extra))


def load_torchscript(path: Path, device: torch.device) -> tuple[Callable, dict]:
    extra = {EXTRA_FILE: ""}
    with _quiet_jit():
        module = torch.jit.load(str(path), map_location=device, _extra_files=extra)
    info = json.loads(extra[EXTRA_FILE] or "{}")
    if "nz" not in info:
        raise BadInputError(
            f"{path}: a TorchScript file without {EXTRA_FILE}; use one written by faces export"
        )
    return module.eval(), info


def load_weights(path: Path, device: torch.device) -> tuple[Callable, dict]:
    from models.config import TrainConfig
    from models.dcgan import build_generator

    try:
        data = torch.load(path, map_location=device, weights_only=True)
    except Exception as e:
        raise BadInputError(f"{path}: not a readable generator file ({type(e).__name__}: {e})") from e
    if not isinstance(data, dict) or data.get("format") != WEIGHTS_FORMAT:
        raise BadInputError(
            f"{path}: not an exported generator; pass generator.pt or generator.torchscript.pt from "
            "exports/<run>/ (a training checkpoint is exported with: faces export)"
        )
    config = TrainConfig(**data["config"])
    generator = build_generator(config).to(device)
    generator.load_state_dict(data["generator"])
    return generator.eval(), {"nz": config.nz, **data.get("info", {})}


def load_generator(model_path: str | Path, device: str | torch.device = "cpu") -> tuple[Callable, dict]:
    """(generator, info) from either exported file; info holds at least the latent size `nz`."""
    path = Path(model_path).expanduser()
    if not path.is_file():
        raise BadInputError(
            f"no generator at {path}: pass exports/<run>/generator.torchscript.pt or generator.pt "
            "(written by faces export)"
        )
    device = torch.device(device)
    return load_torchscript(path, device) if is_torchscript(path) else load_weights(path, device)


def latents(n: int, nz: int, seed: int) -> torch.Tensor:
    """The latents for a seed: drawn on the CPU, so every device and file gives the same images."""
    return torch.randn(n, nz, generator=torch.Generator().manual_seed(seed))


def slerp(a: torch.Tensor, b: torch.Tensor, t: float) -> torch.Tensor:
    """Spherical interpolation of latents (White 2016): stays where Gaussian latents have their mass."""
    cos = torch.sum(a * b, dim=-1, keepdim=True) / (
        a.norm(dim=-1, keepdim=True) * b.norm(dim=-1, keepdim=True)
    )
    omega = torch.arccos(cos.clamp(-1, 1))
    sin = torch.sin(omega)
    if bool((sin.abs() < 1e-6).any()):  # (anti)parallel: plain linear interpolation is as good
        return (1 - t) * a + t * b
    return (torch.sin((1 - t) * omega) * a + torch.sin(t * omega) * b) / sin


@torch.no_grad()
def generate(generator: Callable, z: torch.Tensor, device: str | torch.device = "cpu") -> np.ndarray:
    """uint8 (N, H, W, C) images for latents z, in batches."""
    out = []
    for start in range(0, len(z), BATCH):
        x = generator(z[start : start + BATCH].to(device)).float().clamp(-1, 1)
        out.append(((x + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy())
    return np.concatenate(out)


def save_images(images: np.ndarray, out_dir: Path, prefix: str = "sample") -> list[Path]:
    from export.plots import save_png

    out_dir.mkdir(parents=True, exist_ok=True)
    width = max(4, len(str(len(images) - 1)))
    return [save_png(out_dir / f"{prefix}-{k:0{width}d}.png", image) for k, image in enumerate(images)]


def sample(
    model_path: str | Path, n: int, seed: int, out_dir: str | Path, device: str | torch.device = "cpu"
) -> list[Path]:
    """Write n PNGs (sample-0000.png, ...) from an exported generator: the same seed, the same images."""
    if n < 1:
        raise BadInputError(f"-n {n}: ask for at least one sample")
    if not 0 <= seed <= MAX_SEED:
        raise BadInputError(f"--seed {seed}: a seed is a whole number from 0 to {MAX_SEED}")
    if Path(out_dir).expanduser().exists() and not Path(out_dir).expanduser().is_dir():
        raise BadInputError(f"--out {out_dir}: is a file; name a folder (it is made if missing)")
    generator, info = load_generator(model_path, device)
    images = generate(generator, latents(n, int(info["nz"]), seed), device)
    return save_images(images, Path(out_dir).expanduser())
