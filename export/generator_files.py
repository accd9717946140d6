"""The generator for inference: generator.pt (weights), generator.torchscript.pt and generator.onnx.

The TorchScript file is the one that must exist (it runs without this project's code) and is checked
against the PyTorch generator; ONNX is optional and its failure only becomes a note.
"""

from pathlib import Path

import torch

from common.files import atomic_write_with
from export import inference
from export.config import ExportConfig
from models.config import TrainConfig

ONNX_MISSING = "the onnx package is not installed (pip install onnx onnxscript)"


def write_generator(
    generator: torch.nn.Module, ckpt: dict, run: str, out: Path, config: ExportConfig
) -> dict:
    """generator.pt (weights), generator.torchscript.pt and, when onnx is installed, generator.onnx."""
    train_config = TrainConfig(**ckpt["config"])
    info = {
        "run": run,
        "step": int(ckpt["step"]),
        "dataset_id": ckpt["dataset_id"],
        "image_size": train_config.image_size,
        "channels": train_config.channels,
        "model": train_config.model,
    }
    cpu_generator = generator.to("cpu").eval()
    weights = {
        "format": inference.WEIGHTS_FORMAT,
        "version": 1,
        "generator": cpu_generator.state_dict(),
        "config": train_config.model_dump(mode="json"),
        "info": info,
    }
    atomic_write_with(out / "generator.pt", lambda tmp: torch.save(weights, tmp))
    inference.save_torchscript(cpu_generator, train_config.nz, info, out / "generator.torchscript.pt")
    result = {"torchscript": "generator.torchscript.pt", "weights": "generator.pt", "onnx": None}
    if config.onnx:
        try:
            result["onnx"] = write_onnx(cpu_generator, train_config.nz, out / "generator.onnx")
        except Exception as e:  # optional: the TorchScript file is the one that must exist
            result["onnx_error"] = f"{type(e).__name__}: {e}"[:500]
    return result


def write_onnx(generator: torch.nn.Module, nz: int, path: Path) -> str | None:
    """ONNX with a dynamic batch axis, when the onnx package is there (it is optional).

    Weights are embedded (external_data=False): a DCGAN is far below ONNX's 2 GB limit, and one file
    survives the atomic rename that a file plus its `.data` sidecar would not.
    """
    try:
        import onnx  # noqa: F401
    except ImportError:
        return None
    batch = torch.export.Dim("batch", min=1)

    def export(tmp: Path) -> None:
        torch.onnx.export(
            generator,
            (torch.zeros(2, nz),),
            str(tmp),
            input_names=["z"],
            output_names=["image"],
            dynamic_shapes={"z": {0: batch}},
            external_data=False,
            verbose=False,
        )

    atomic_write_with(path, export, suffix=".onnx")
    return path.name


def torchscript_matches(generator: torch.nn.Module, path: Path, z: torch.Tensor) -> float:
    """Largest pixel difference (in [-1, 1] units) between the PyTorch and the TorchScript generator."""
    scripted, _ = inference.load_torchscript(path, torch.device("cpu"))
    with torch.no_grad():
        return float((generator.cpu()(z) - scripted(z)).abs().max())


def write_generator_files(
    generator: torch.nn.Module,
    ckpt: dict,
    run: str,
    out: Path,
    config: ExportConfig,
    check_z: torch.Tensor,
    notes: list[str],
) -> dict:
    """Every generator file, a note when ONNX was asked for but not written, and the TorchScript check.

    Returns export.json's `files`: the file names and `torchscript_max_abs_diff` on `check_z`.
    """
    exported = write_generator(generator, ckpt, run, out, config)
    if config.onnx and exported["onnx"] is None:
        notes.append(f"generator.onnx not written: {exported.pop('onnx_error', ONNX_MISSING)}")
    exported["torchscript_max_abs_diff"] = torchscript_matches(
        generator, out / "generator.torchscript.pt", check_z
    )
    return exported
