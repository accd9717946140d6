"""Where the networks run and in which precision: one home for the choice, for training and export."""

import torch

from common.report import BadInputError


def wants_cuda(device: str) -> bool:
    return device.startswith("cuda") or (device == "auto" and torch.cuda.is_available())


def pick_device(name: str, table: str = "train", local_rank: int | None = None) -> torch.device:
    """`auto`, `cpu`, `cuda` or `cuda:N` as a torch.device; asking for CUDA without a GPU is bad input.

    `table` names the faces.toml table the setting came from, for the error message; under torchrun
    `local_rank` picks this process's GPU.
    """
    if not wants_cuda(name):
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise BadInputError(
            f'[{table}] device = "{name}" but no CUDA GPU is visible; set device = "auto" or "cpu"'
        )
    if local_rank is not None:  # torchrun: one process per GPU
        device = torch.device("cuda", local_rank)
    else:
        device = torch.device("cuda" if name == "auto" else name)
    visible = torch.cuda.device_count()
    if device.index is not None and device.index >= visible:
        raise BadInputError(
            f'[{table}] device = "{name}" asks for GPU {device.index} but {visible} CUDA GPU(s) are visible; '
            f'set device = "cuda" or a number below {visible}'
        )
    return device


def pick_precision(precision: str, device: torch.device) -> tuple[torch.dtype | None, str]:
    """The autocast dtype (None: fp32) and its name. Reduced precision is a CUDA speed-up only."""
    if device.type != "cuda" or precision == "fp32":
        return None, "fp32"
    if precision == "auto":
        precision = "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return (torch.bfloat16, "bf16") if precision == "bf16" else (torch.float16, "fp16")


def set_speed_flags(device: torch.device, cpu_threads: int) -> int:
    """Process-wide settings for fast training on `device`; the thread count before, to restore later.

    On CUDA, cuDNN autotuning (fixed shapes: it picks the fastest kernels once) and TF32 matmuls and
    convolutions; on the CPU, `cpu_threads` threads when it is not 0 (PyTorch's default).
    """
    threads = torch.get_num_threads()
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    elif cpu_threads:
        torch.set_num_threads(cpu_threads)
    return threads
