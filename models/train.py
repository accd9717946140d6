"""Train the DCGAN (or the MLP GAN) on the latest dataset snapshot: fast, resumable, watched.

Each step updates D once on a real and a fake batch, then G once through the updated D, as
pytorch/examples' dcgan/main.py does, with differences that make it fast: the dataset sits on the
device as uint8 (models.data), D returns logits (losses stay safe under bf16 autocast), D's weights
get no gradients in G's step, and the loop never waits for the GPU except every `log_every` steps,
when it reads the losses back. Checkpoints: models.checkpoint; warnings and metrics.jsonl:
models.watch; several processes: models.ddp.

A run lives in runs/<run>/ (docs/DESIGN.md), named after the dataset and the settings that shape
what is learned, so a rerun on the same dataset finds its run: finished, it does nothing; killed,
it resumes from the latest checkpoint. A new dataset with `warm_start` starts from the previous
run's networks. One process per GPU under torchrun trains with DDP.

    python -m models.train --config faces.toml
    torchrun --nproc-per-node 4 -m models.train --config faces.toml
"""

import argparse
import fcntl
import json
import logging
import math
import os
import shutil
import sys
import time
import tomllib
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from copy import deepcopy
from datetime import UTC, datetime
from importlib import import_module
from importlib.util import find_spec
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import ValidationError
from torch import nn
from tqdm import tqdm

from common.files import (
    atomic_symlink,
    atomic_write_json,
    atomic_write_with,
    config_hash,
    sha256_bytes,
)
from common.layout import DataRoot
from common.report import BadInputError, StageReport, TransientError
from models import ddp
from models.checkpoint import (
    best_path,
    copy_checkpoint,
    list_checkpoints,
    load_checkpoint,
    load_latest,
    prune,
    save_checkpoint,
    step_path,
)
from models.config import TrainConfig
from models.data import DeviceDataset, fit_images, open_images, shard_seed, to_uint8
from models.dcgan import build_discriminator, build_generator
from models.watch import MetricsLog, Watch

log = logging.getLogger(__name__)

Progress = Callable[[int, int, str], None]

# The settings a warm start must share with its parent: they fix the networks' shapes.
ARCH_KEYS = ("model", "image_size", "channels", "nz", "ngf", "ndf")
# Settings that change how a run is computed, watched or stored, not what it learns. They are left
# out of the run's name, so changing them keeps the run; `steps` too, so raising it extends a run.
RUNTIME_KEYS = frozenset(
    {
        "steps",
        "device",
        "precision",
        "channels_last",
        "compile",
        "cuda_graphs",
        "sync_batchnorm",
        "cpu_threads",
        "log_every",
        "checkpoint_every",
        "keep_checkpoints",
        "sample_every",
        "eval_every",
        "eval_samples",
        "watch_window",
        "overpower_d_loss",
        "collapse_diversity",
        "early_stop",
        "tensorboard",
        "progress_bar",
    }
)
GRAPH_WARMUP_STEPS = 3  # eager steps before a CUDA graph is captured (PyTorch's docs use three)
GRID_SAMPLES = 64  # an 8x8 grid of the fixed noise
EMA_STATS_SAMPLES, EMA_STATS_BATCH = 512, 128  # noise that measures the EMA generator's batch-norm statistics
DONE = ("finished", "stopped_early")


class TrainingDivergedError(BadInputError):
    """The losses became NaN or Inf: the settings need changing, so retrying the same run cannot help."""


# ---------------------------------------------------------------------------------------------------
# Runs: naming, the dataset, run.json


def latest_dataset(root: DataRoot) -> tuple[Path, str]:
    """The newest dataset snapshot's folder and id (the folder's name, a hash of its content)."""
    link = root.latest_dataset
    if not (link / "images.npy").is_file():
        raise BadInputError(f"no dataset snapshot at {link}: run the validate stage first (faces validate)")
    folder = link.resolve()
    return folder, folder.name


def run_name(config: TrainConfig, dataset_id: str) -> str:
    learned = {k: v for k, v in config.model_dump(mode="json").items() if k not in RUNTIME_KEYS}
    return f"{dataset_id[:12]}-{config_hash(learned)}"


def input_fingerprint(config: TrainConfig, root: DataRoot) -> str:
    """The dataset snapshot's id and the whole config: the flows' cache key for this stage.

    With no dataset yet it still returns a key, so that train() itself runs and says what is missing.
    """
    link = root.latest_dataset
    dataset_id = link.resolve().name if (link / "images.npy").is_file() else "no-dataset"
    return sha256_bytes(f"{dataset_id}|{config_hash(config)}".encode())


def read_run_info(run_dir: Path) -> dict[str, Any]:
    try:
        return json.loads((run_dir / "run.json").read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return {}


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


@contextmanager
def run_lock(run_dir: Path) -> Iterator[None]:
    """One trainer per run folder; the kernel drops the lock when its holder dies, even by SIGKILL."""
    run_dir.mkdir(parents=True, exist_ok=True)
    with open(run_dir / ".lock", "w") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise TransientError(
                f"another process is training {run_dir}; retry when it has finished"
            ) from None
        yield


def clear_run(run_dir: Path) -> None:
    """Everything a run wrote (for force=True), keeping the lock file its caller holds."""
    for child in run_dir.iterdir():
        if child.name == ".lock":
            continue
        if child.is_dir() and not child.is_symlink():
            shutil.rmtree(child)
        else:
            child.unlink()


# ---------------------------------------------------------------------------------------------------
# Losses on logits. "Real" and "fake" parts are separate because D sees them in separate forwards.


def real_loss(kind: str, logits: torch.Tensor, smoothing: float) -> torch.Tensor:
    target = 1.0 - smoothing  # one-sided label smoothing
    if kind == "bce":
        return F.binary_cross_entropy_with_logits(logits, torch.full_like(logits, target))
    if kind == "hinge":
        return F.relu(1 - logits).mean()
    return 0.5 * (logits - target).pow(2).mean()


def fake_loss(kind: str, logits: torch.Tensor) -> torch.Tensor:
    if kind == "bce":
        return F.binary_cross_entropy_with_logits(logits, torch.zeros_like(logits))
    if kind == "hinge":
        return F.relu(1 + logits).mean()
    return 0.5 * logits.pow(2).mean()


def generator_loss(kind: str, logits: torch.Tensor) -> torch.Tensor:
    if kind == "bce":  # non-saturating: maximise log D(G(z))
        return F.binary_cross_entropy_with_logits(logits, torch.ones_like(logits))
    if kind == "hinge":
        return -logits.mean()
    return 0.5 * (logits - 1).pow(2).mean()


@contextmanager
def _on_side_stream(stream: "torch.cuda.Stream") -> Iterator[None]:
    """Run the block on `stream`, ordered after and before the current stream's work."""
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        yield
    torch.cuda.current_stream().wait_stream(stream)


@contextmanager
def frozen(module: nn.Module) -> Iterator[None]:
    """The module's weights need no gradients inside the block (gradients still flow through it)."""
    module.requires_grad_(False)
    try:
        yield
    finally:
        module.requires_grad_(True)


def grad_norm(module: nn.Module) -> torch.Tensor:
    norms = [p.grad.detach().float().norm() for p in module.parameters() if p.grad is not None]
    return torch.stack(norms).norm() if norms else torch.zeros(())


# ---------------------------------------------------------------------------------------------------
# Devices and precision


def wants_cuda(device: str) -> bool:
    return device.startswith("cuda") or (device == "auto" and torch.cuda.is_available())


def pick_device(name: str, dist: ddp.Dist) -> torch.device:
    if not wants_cuda(name):
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise BadInputError(
            f'[train] device = "{name}" but no CUDA GPU is visible; set device = "auto" or "cpu"'
        )
    if dist.enabled:  # torchrun: one process per GPU
        return torch.device("cuda", dist.local_rank)
    return torch.device("cuda" if name == "auto" else name)


def pick_precision(precision: str, device: torch.device) -> tuple[torch.dtype | None, str]:
    """The autocast dtype (None: fp32) and its name. Reduced precision is a CUDA speed-up only."""
    if device.type != "cuda" or precision == "fp32":
        return None, "fp32"
    if precision == "auto":
        precision = "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return (torch.bfloat16, "bf16") if precision == "bf16" else (torch.float16, "fp16")


def _swd_function() -> Callable[..., dict] | None:
    """models.metrics.sliced_wasserstein when that module is installed; else best.pt = latest."""
    if find_spec("models.metrics") is None:
        return None
    return getattr(import_module("models.metrics"), "sliced_wasserstein", None)


# ---------------------------------------------------------------------------------------------------
# The trainer


class Trainer:
    """Networks, optimisers, data and the loop for one run folder; one per process under torchrun."""

    def __init__(
        self,
        config: TrainConfig,
        images_path: Path,
        run_dir: Path,
        dataset_id: str,
        dist: ddp.Dist | None = None,
        on_progress: Progress | None = None,
    ) -> None:
        dist = dist or ddp.Dist()
        self.config, self.dist, self.run_dir, self.dataset_id = config, dist, run_dir, dataset_id
        self.on_progress = on_progress if dist.is_main else None
        self.device = pick_device(config.device, dist)
        self.amp_dtype, self.precision = pick_precision(config.precision, self.device)
        cuda = self.device.type == "cuda"
        # channels_last weights trip a stride check in inductor's convolution backward (PyTorch 2.11),
        # and compiled code picks its own layouts anyway.
        channels_last = cuda and config.channels_last and not config.compile
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        # Graphs replay fixed kernels on fixed memory: not with fp16's data-dependent loss scaling
        # (it reads the scale back) nor DDP's collectives.
        self.use_graphs = cuda and config.cuda_graphs and self.precision != "fp16" and not dist.enabled
        self._graph: torch.cuda.CUDAGraph | None = None
        self._inputs: tuple[torch.Tensor, ...] = ()  # the graph's input buffers: real batch, noise
        self._outputs: dict[str, torch.Tensor] = {}  # the figures each replay writes
        self._side_stream = torch.cuda.Stream(self.device) if self.use_graphs else None
        self._eager_steps = 0  # since the optimisers last changed: a graph is captured after a few
        if cuda:
            torch.backends.cudnn.benchmark = True  # fixed shapes: let cuDNN pick the fastest kernels once
            torch.backends.cuda.matmul.allow_tf32 = True
            torch.backends.cudnn.allow_tf32 = True
        self.notes: list[str] = []
        self._threads = torch.get_num_threads()  # restored by close(): the setting is process-wide
        if not cuda and config.cpu_threads:
            torch.set_num_threads(config.cpu_threads)
        if config.compile and not cuda:
            self.notes.append("compile = true applies on CUDA only; trained eagerly")

        self._load_data(images_path)
        self._build_networks()

        self.fixed_noise = self._noise(GRID_SAMPLES, salt=1)  # the grids
        self.eval_noise = self._noise(len(self.eval_real), salt=2)  # SWD
        self._stats_noise = self._noise(EMA_STATS_SAMPLES, salt=3)  # the EMA's batch-norm statistics
        self._ema_stats_step = -1
        self.gen = torch.Generator(self.device).manual_seed(shard_seed(config.seed, dist.rank))
        self.swd = _swd_function() if dist.is_main else None
        if self.swd is None and dist.is_main:
            self.notes.append(
                "models.metrics.sliced_wasserstein is not available: best.pt is the latest checkpoint"
            )

        self.step = 0
        self.train_seconds = 0.0
        self.session_steps, self.session_seconds = 0, 0.0
        self.best_swd = math.inf
        self.last_row: dict[str, Any] = {}
        self.latest_checkpoint: Path | None = None
        self.latest_grid: Path | None = None
        self._finite = torch.ones((), dtype=torch.bool, device=self.device)
        self.watch = Watch(config)
        self.metrics = (
            MetricsLog(run_dir / "metrics.jsonl", run_dir / "tensorboard" if config.tensorboard else None)
            if dist.is_main
            else None
        )

    # -- setup ----------------------------------------------------------------------------------

    def _load_data(self, images_path: Path) -> None:
        cfg, dist = self.config, self.dist
        images = open_images(images_path)
        self.dataset_size = len(images)
        if cfg.batch_size % dist.world_size:
            raise BadInputError(
                f"[train] batch_size = {cfg.batch_size} is split over {dist.world_size} processes: "
                f"make it a multiple of {dist.world_size}"
            )
        if self.dataset_size < dist.world_size:
            raise BadInputError(
                f"{images_path}: {self.dataset_size} images cannot be shared by {dist.world_size} processes"
            )
        shard = fit_images(images[dist.rank :: dist.world_size], cfg.image_size, cfg.channels)
        self.data = DeviceDataset(
            shard,
            cfg.batch_size // dist.world_size,
            self.device,
            seed=cfg.seed,
            rank=dist.rank,
            flip=cfg.flip,
            memory_format=self.memory_format,
        )
        # A fixed real sample for SWD and the diversity reference (rank 0 evaluates).
        n = min(cfg.eval_samples, self.dataset_size)
        rows = np.sort(np.random.default_rng(cfg.seed).choice(self.dataset_size, n, replace=False))
        self.eval_real = fit_images(images[rows], cfg.image_size, cfg.channels).numpy()

    def _build_networks(self) -> None:
        cfg, device = self.config, self.device
        with torch.random.fork_rng(devices=[]):  # leave the caller's random state alone
            torch.manual_seed(cfg.seed)  # the same initial weights on every process and every rerun
            g, d = build_generator(cfg), build_discriminator(cfg)
        self.g_raw = g.to(device, memory_format=self.memory_format)
        self.d_raw = d.to(device, memory_format=self.memory_format)
        self.g_ema = deepcopy(self.g_raw).requires_grad_(False).eval()
        self.g = ddp.wrap(self.g_raw, device, self.dist, cfg.sync_batchnorm, cfg.compile)
        self.d = ddp.wrap(self.d_raw, device, self.dist, cfg.sync_batchnorm, cfg.compile)
        fused = {"fused": True} if device.type == "cuda" else {}  # one kernel per step for all parameters
        if self.use_graphs:
            fused["capturable"] = True  # the step count lives on the GPU, so a replay advances it
        betas = (cfg.beta1, cfg.beta2)
        self.opt_g = torch.optim.Adam(self.g_raw.parameters(), lr=cfg.lr_g, betas=betas, **fused)
        self.opt_d = torch.optim.Adam(self.d_raw.parameters(), lr=cfg.lr_d, betas=betas, **fused)
        self.scaler = torch.amp.GradScaler(device.type, enabled=self.precision == "fp16")
        self._ema_pairs = (list(self.g_ema.parameters()), list(self.g_raw.parameters()))

    def _noise(self, n: int, salt: int) -> torch.Tensor:
        """Latents that depend only on the seed and their use: the same in every process and rerun."""
        g = torch.Generator().manual_seed(shard_seed(self.config.seed, rank=0, salt=-salt))
        return torch.randn(n, self.config.nz, 1, 1, generator=g).to(self.device)

    def autocast(self) -> torch.autocast:
        # Autocast's cache of cast weights would be baked into a captured graph and go stale.
        return torch.autocast(
            self.device.type,
            dtype=self.amp_dtype,
            enabled=self.amp_dtype is not None,
            cache_enabled=not self.use_graphs,
        )

    # -- one step -------------------------------------------------------------------------------

    def train_step(self, measure: bool = False) -> dict[str, torch.Tensor]:
        """One D update and one G update. With `measure`, also returns the figures to log (as tensors).

        With CUDA graphs, the first steps run eagerly on a side stream (warming up cuDNN and the
        optimisers' state), then one step is captured and every later step replays it on new inputs.
        """
        real = self.data.batch(self.step, self.gen)
        z = torch.randn(len(real), self.config.nz, 1, 1, device=self.device, generator=self.gen)
        if self._graph is not None:
            self._inputs[0].copy_(real)
            self._inputs[1].copy_(z)
            self._graph.replay()
            figures = {k: v.clone() for k, v in self._outputs.items()} if measure else {}
        elif self.use_graphs:
            with _on_side_stream(self._side_stream):
                figures = self._update(real, z, measure)
            self._eager_steps += 1
            if self._eager_steps >= GRAPH_WARMUP_STEPS:
                self._capture(real, z)
        else:
            figures = self._update(real, z, measure)
        self._update_ema()
        self.step += 1
        return figures

    def _capture(self, real: torch.Tensor, z: torch.Tensor) -> None:
        """Record one whole update (with its figures) as a CUDA graph over static input buffers."""
        self._inputs = (real.clone(memory_format=torch.preserve_format), z.clone())
        self._graph = torch.cuda.CUDAGraph()
        # thread_local: a CUDA call from another thread (a Prefect worker, say) cannot spoil the capture.
        with torch.cuda.graph(self._graph, stream=self._side_stream, capture_error_mode="thread_local"):
            self._outputs = self._update(*self._inputs, measure=True)

    def _drop_graph(self) -> None:
        """Forget the captured step: the optimisers' state tensors are about to be replaced."""
        self._graph, self._eager_steps = None, 0

    def _update(self, real: torch.Tensor, z: torch.Tensor, measure: bool) -> dict[str, torch.Tensor]:
        cfg = self.config
        with self.autocast():
            fake = self.g(z)

        # D: real and fake in separate forwards as in DCGAN, so batch norm sees one kind at a time;
        # their gradients add up locally and are all-reduced once, by the second backward.
        self.opt_d.zero_grad(set_to_none=True)
        with ddp.no_sync(self.d):
            with self.autocast():
                real_logits = self.d(real).float()
            loss_real = real_loss(cfg.loss, real_logits, cfg.label_smoothing)
            self.scaler.scale(loss_real).backward()
        with self.autocast():
            fake_logits = self.d(fake.detach()).float()
        loss_fake = fake_loss(cfg.loss, fake_logits)
        self.scaler.scale(loss_fake).backward()
        grad_norm_d = grad_norm(self.d_raw) if measure else None
        self.scaler.step(self.opt_d)

        # G: through the updated D, held fixed: its weights get no gradients (saving part of its
        # backward work) and DDP has nothing of D's to all-reduce.
        self.opt_g.zero_grad(set_to_none=True)
        with frozen(self.d_raw), ddp.no_sync(self.d):
            with self.autocast():
                gen_logits = self.d(fake).float()
            loss_g = generator_loss(cfg.loss, gen_logits)
            self.scaler.scale(loss_g).backward()
        self.scaler.step(self.opt_g)
        self.scaler.update()

        loss_d = (loss_real + loss_fake).detach()
        self._finite &= torch.isfinite(loss_d + loss_g.detach())  # read back only at boundaries
        if not measure:
            return {}
        score = torch.sigmoid if cfg.loss == "bce" else (lambda t: t)  # D(x) as a probability for BCE
        return {
            "loss_d": loss_d,
            "loss_g": loss_g.detach(),
            "d_x": score(real_logits.detach()).mean(),
            "d_g_z": score(fake_logits.detach()).mean(),
            "grad_norm_d": grad_norm_d,
            "grad_norm_g": grad_norm(self.g_raw),
        }

    @torch.no_grad()
    def _update_ema(self) -> None:
        # Warm-up: the average follows closely at first, so early samples are not dominated by init.
        decay = min(self.config.ema_decay, (1 + self.step) / (10 + self.step))
        torch._foreach_lerp_(self._ema_pairs[0], self._ema_pairs[1], 1 - decay)

    @torch.no_grad()
    def refresh_ema_statistics(self) -> None:
        """Batch-norm statistics that match the averaged weights ("standing statistics", BigGAN).

        The EMA generator is sampled in eval mode. G's running averages describe G's recent weights,
        not the averaged ones, and early in training they still hold their initial values, which
        makes every sample the same grey image. So they are measured afresh on the averaged weights
        (a plain mean over a few batches of fixed noise) before the EMA is sampled or saved.
        """
        if self._ema_stats_step == self.step:
            return
        norms = [m for m in self.g_ema.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
        momenta = [m.momentum for m in norms]
        for m in norms:
            m.reset_running_stats()
            m.momentum = None  # cumulative average
        self.g_ema.train()
        with self.autocast():
            for z in self._stats_noise.split(EMA_STATS_BATCH):
                self.g_ema(z)
        self.g_ema.eval()
        for m, momentum in zip(norms, momenta, strict=True):
            m.momentum = momentum
        self._ema_stats_step = self.step

    @torch.no_grad()
    def sample(self, z: torch.Tensor, batch: int = 256) -> torch.Tensor:
        """Images from the EMA generator (eval mode), as float in [-1, 1]."""
        self.refresh_ema_statistics()
        with self.autocast():
            return torch.cat([self.g_ema(z[i : i + batch]).float() for i in range(0, len(z), batch)])

    # -- checkpoints ----------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        """The checkpoint (docs/DESIGN.md). Collective under DDP: every process's RNG state is gathered."""
        rng_states = ddp.gather(self.gen.get_state(), self.dist)
        self.refresh_ema_statistics()
        return {
            "generator": self.g_raw.state_dict(),
            "discriminator": self.d_raw.state_dict(),
            "generator_ema": self.g_ema.state_dict(),
            "opt_g": self.opt_g.state_dict(),
            "opt_d": self.opt_d.state_dict(),
            "scaler": self.scaler.state_dict(),
            "step": self.step,
            "rng": {
                "device_type": self.device.type,
                "world_size": self.dist.world_size,
                "generators": rng_states,
                "torch": torch.get_rng_state(),
            },
            "config": self.config.model_dump(mode="json"),
            "dataset_id": self.dataset_id,
            "metrics": {
                **{k: v for k, v in self.last_row.items() if k != "step"},
                "images_seen": self.images_seen,
                "train_seconds": self.train_seconds,
                "best_swd": None if math.isinf(self.best_swd) else self.best_swd,
            },
        }

    def load_networks(self, ckpt: dict[str, Any]) -> None:
        self.g_raw.load_state_dict(ckpt["generator"])
        self.d_raw.load_state_dict(ckpt["discriminator"])
        self.g_ema.load_state_dict(ckpt["generator_ema"])
        self._ema_stats_step = -1

    def load_state(self, ckpt: dict[str, Any]) -> None:
        """Everything a checkpoint holds, so training continues exactly where it stopped."""
        self._drop_graph()
        self.load_networks(ckpt)
        for opt, key in ((self.opt_g, "opt_g"), (self.opt_d, "opt_d")):
            opt.load_state_dict(_match_optimizer_flags(ckpt[key], opt))
        if self.scaler.is_enabled() and ckpt["scaler"]:
            self.scaler.load_state_dict(ckpt["scaler"])
        self.step = int(ckpt["step"])
        metrics = ckpt.get("metrics") or {}
        self.train_seconds = float(metrics.get("train_seconds", 0.0))
        if metrics.get("best_swd") is not None:
            self.best_swd = float(metrics["best_swd"])
        rng = ckpt["rng"]
        if rng["device_type"] == self.device.type and rng["world_size"] == self.dist.world_size:
            # RNG states are CPU byte tensors, whatever map_location moved them to.
            self.gen.set_state(rng["generators"][self.dist.rank].cpu())
            torch.set_rng_state(rng["torch"].cpu())
        else:  # another device kind or process count: a fresh, still reproducible stream
            self.gen.manual_seed(shard_seed(self.config.seed, self.dist.rank, salt=self.step))
            self.notes.append(
                f"resumed on {self.device.type} x{self.dist.world_size} from a checkpoint made on "
                f"{rng['device_type']} x{rng['world_size']}: random numbers differ from an uninterrupted run"
            )
        self._finite.fill_(True)

    def latest_good(self, directory: Path) -> tuple[dict[str, Any], Path] | None:
        """The newest good checkpoint in `directory`, the same one on every process.

        Rank 0 picks it (setting damaged ones aside); the others load the file it picked.
        """
        found = load_latest(directory, map_location=self.device) if self.dist.is_main else None
        path = ddp.broadcast(found[1] if found else None, self.dist)
        if path is None or found is not None:
            return found
        return load_checkpoint(path, map_location=self.device), path

    def resume(self) -> int | None:
        """Load the run's latest good checkpoint; the step it resumes from, or None for a new run."""
        found = self.latest_good(self.checkpoint_dir)
        if found is None:
            return None
        ckpt, path = found
        self.load_state(ckpt)
        self.latest_checkpoint = path
        if self.metrics is not None:
            self.metrics.truncate(self.step)
        log.info("resumed %s from %s (step %d)", self.run_dir.name, path.name, self.step)
        return self.step

    def save(self, state: dict[str, Any]) -> Path:
        path = save_checkpoint(step_path(self.checkpoint_dir, self.step), state)
        prune(self.checkpoint_dir, self.config.keep_checkpoints)
        if self.swd is None:  # no quality metric to choose by: the best is the newest
            copy_checkpoint(path, best_path(self.checkpoint_dir))
        self.latest_checkpoint = path
        return path

    @property
    def checkpoint_dir(self) -> Path:
        return self.run_dir / "checkpoints"

    @property
    def images_seen(self) -> int:
        return self.step * self.config.batch_size

    # -- the loop -------------------------------------------------------------------------------

    def run(self, until: int) -> str:
        """Train up to step `until`: "finished", or "stopped_early" after a warning with early_stop."""
        cfg = self.config
        bar = tqdm(
            total=until,
            initial=self.step,
            unit="step",
            dynamic_ncols=True,
            # On a terminal only: in logs (Prefect workers, CI) a redrawn bar is thousands of lines.
            disable=not (cfg.progress_bar and self.dist.is_main and sys.stderr.isatty()),
        )
        self._window = (time.perf_counter(), self.step)
        try:
            while self.step < until:
                next_step = self.step + 1
                figures = self.train_step(measure=next_step % cfg.log_every == 0 or next_step == until)
                bar.update(1)
                due = {
                    "checkpoint": self.step % cfg.checkpoint_every == 0,
                    "sample": self.step % cfg.sample_every == 0,
                    "eval": self.step % cfg.eval_every == 0,
                }
                due = {k: v or self.step == until for k, v in due.items()}
                if (figures or any(due.values())) and self._boundary(until, figures, due, bar):
                    return "stopped_early"
        finally:
            bar.close()
        return "finished"

    def _boundary(
        self, until: int, figures: dict[str, torch.Tensor], due: dict[str, bool], bar: tqdm
    ) -> bool:
        """Everything between steps that needs the device's results; True when the run should stop."""
        self._check_finite(self._window[1], self.step)  # the only place the loop waits for the device
        seconds, steps = time.perf_counter() - self._window[0], self.step - self._window[1]
        self.train_seconds += seconds
        self.session_seconds += seconds
        self.session_steps += steps
        row: dict[str, Any] = {"step": self.step, "images_seen": self.images_seen}
        if figures:
            row |= self._figures(figures, steps * self.config.batch_size / max(seconds, 1e-9))
            bar.set_postfix(loss_d=f"{row['loss_d']:.3f}", loss_g=f"{row['loss_g']:.3f}")
        if due["sample"]:
            row |= self._sample_grid()
        improved = False
        if due["eval"]:
            row |= self._evaluate()
            improved = row.get("swd", math.inf) < self.best_swd
            self.best_swd = min(self.best_swd, row.get("swd", math.inf))
        warned = self.watch.overpowered or self.watch.collapsed
        stop = ddp.any_rank(self.config.early_stop and warned, self.device, self.dist)
        self.last_row = row
        if self.metrics is not None:  # before the checkpoint: a resumed run drops rows past its checkpoint
            self.metrics.write(row)
        if due["checkpoint"] or improved or stop:
            self._checkpoint(improved)
        if self.on_progress is not None:
            self.on_progress(self.step, until, _progress_message(row))
        if stop:
            log.warning("early_stop: stopping at step %d", self.step)
        self._window = (time.perf_counter(), self.step)
        return stop

    def _check_finite(self, checked_step: int, step: int) -> None:
        if not ddp.any_rank(not bool(self._finite), self.device, self.dist):
            return
        found = self.latest_good(self.checkpoint_dir)
        if found is not None:
            self.load_state(found[0])
            restored = (
                f"restored the last good checkpoint {found[1].name} (step {self.step}), "
                "which stays the run's latest"
            )
        else:
            restored = "no checkpoint had been written yet"
        raise TrainingDivergedError(
            f"training diverged: the losses became NaN or Inf between steps {checked_step} and {step}; "
            f"{restored}. Lower lr_d and lr_g, try "
            "loss = 'hinge' or precision = 'fp32', then train again"
        )

    def _figures(self, figures: dict[str, torch.Tensor], images_per_second: float) -> dict[str, Any]:
        values = ddp.mean(torch.stack([v.float() for v in figures.values()]), self.dist).tolist()
        row = dict(zip(figures, values, strict=True))
        row["grad_norm_d"] /= self.scaler.get_scale()  # 1.0 unless fp16 loss scaling is on
        row["grad_norm_g"] /= self.scaler.get_scale()
        row["images_per_second"] = round(images_per_second, 1)
        row["seconds"] = round(self.train_seconds, 2)
        row["overpowered"] = self.watch.losses(self.step, row["loss_d"], row["loss_g"])
        return row

    def _sample_grid(self) -> dict[str, Any]:
        if not self.dist.is_main:
            return {}
        from torchvision.utils import make_grid, save_image  # here: importing torchvision takes seconds

        fake = self.sample(self.fixed_noise)
        grid = make_grid(fake, nrow=8, normalize=True, value_range=(-1, 1))
        path = self.run_dir / "grids" / f"step-{self.step}.png"
        atomic_write_with(path, lambda tmp: save_image(grid, tmp, format="png"))
        self.latest_grid = path
        self.metrics.image("samples", grid, self.step)
        real = torch.from_numpy(self.eval_real[:GRID_SAMPLES]).permute(0, 3, 1, 2).float() / 127.5 - 1
        ratio = self.watch.samples(self.step, fake.cpu(), real)
        return {"diversity": round(ratio, 4), "collapsed": self.watch.collapsed}

    def _evaluate(self) -> dict[str, Any]:
        if self.swd is None:
            return {}
        result = self.swd(self.eval_real, to_uint8(self.sample(self.eval_noise)), seed=self.config.seed)
        return {"swd": float(result["mean"]), "swd_levels": [float(v) for v in result["levels"]]}

    def _checkpoint(self, best: bool) -> None:
        state = self.state_dict()  # every process: the RNG states are gathered
        if not self.dist.is_main:
            return
        path = self.save(state)
        if best:
            copy_checkpoint(path, best_path(self.checkpoint_dir))

    def close(self) -> None:
        if self.metrics is not None:
            self.metrics.close()
        torch.set_num_threads(self._threads)


def _match_optimizer_flags(saved: dict[str, Any], opt: torch.optim.Optimizer) -> dict[str, Any]:
    """A saved optimiser state with this optimiser's kernel flags (a CUDA run resumed on the CPU, or back)."""
    flags = ("fused", "foreach", "capturable")
    groups = [
        {**group, **{k: current.get(k) for k in flags}}
        for group, current in zip(saved["param_groups"], opt.param_groups, strict=True)
    ]
    return {**saved, "param_groups": groups}


def _progress_message(row: dict[str, Any]) -> str:
    parts = [f"step {row['step']}"]
    for key in ("loss_d", "loss_g", "images_per_second", "swd"):
        if key in row:
            parts.append(f"{key} {row[key]:.3g}")
    return ", ".join(parts)


# ---------------------------------------------------------------------------------------------------
# The stage


def train(
    config: TrainConfig, root: DataRoot, *, force: bool = False, on_progress: Progress | None = None
) -> StageReport:
    """Train on root's latest dataset into runs/<run>/ (see the module docstring and docs/training.md)."""
    started = time.monotonic()
    dist = ddp.setup(use_cuda=wants_cuda(config.device))
    try:
        report = _train(config, root, dist, force, on_progress)
    finally:
        ddp.teardown(dist)
    report.seconds = time.monotonic() - started
    return report


def _train(
    config: TrainConfig, root: DataRoot, dist: ddp.Dist, force: bool, on_progress: Progress | None
) -> StageReport:
    dataset_dir, dataset_id = latest_dataset(root)
    run_dir = root.run_dir(run_name(config, dataset_id))
    info = read_run_info(run_dir)
    if (
        not force
        and info.get("status") in DONE
        and (info["status"] == "stopped_early" or info["step"] >= config.steps)
    ):
        return _skipped_report(run_dir, info)
    ddp.barrier(dist)  # everyone has read run.json before rank 0 changes it
    if force:
        info = {}
    with run_lock(run_dir) if dist.is_main else nullcontext():
        if force and dist.is_main:
            clear_run(run_dir)
        ddp.barrier(dist)
        trainer = Trainer(config, dataset_dir / "images.npy", run_dir, dataset_id, dist, on_progress)
        try:
            return _run_training(trainer, root, info)
        finally:
            trainer.close()


def _run_training(trainer: Trainer, root: DataRoot, info: dict[str, Any]) -> StageReport:
    config, dist, run_dir = trainer.config, trainer.dist, trainer.run_dir
    resumed = trainer.resume()
    parent = {k: info[k] for k in ("parent", "parent_dataset_id", "parent_step") if k in info}
    if resumed is None and config.warm_start and not parent:
        parent = _warm_start(trainer, root)
    run_info = {
        "run": run_dir.name,
        "dataset_id": trainer.dataset_id,
        "config": config.model_dump(mode="json"),
        "status": "running",
        "parent": None,
        **parent,
        "started": info.get("started", _now()),
        "device": str(trainer.device),
        "precision": trainer.precision,
        "world_size": dist.world_size,
        "step": trainer.step,
    }
    if dist.is_main:
        atomic_write_json(run_dir / "run.json", run_info)
    try:
        status = trainer.run(config.steps)
    except TrainingDivergedError as e:
        if dist.is_main:
            atomic_write_json(
                run_dir / "run.json", run_info | {"status": "failed", "error": str(e), "step": trainer.step}
            )
        raise
    run_info |= {
        "status": status,
        "finished": _now(),
        "step": trainer.step,
        "images_seen": trainer.images_seen,
        "train_seconds": round(trainer.train_seconds, 2),
        "best_swd": None if math.isinf(trainer.best_swd) else trainer.best_swd,
        "warnings": trainer.watch.warnings,
    }
    if dist.is_main:
        atomic_write_json(run_dir / "run.json", run_info)
        atomic_symlink(run_dir.name, root.runs_dir / "latest")
    notes = [f"run {run_dir.name} on {trainer.device} ({trainer.precision}, {dist.world_size} process(es))"]
    if resumed is not None:
        notes.append(f"resumed from step {resumed}")
    if run_info.get("parent"):
        notes.append(f"warm start from run {run_info['parent']} (step {run_info.get('parent_step')})")
    if status == "stopped_early":
        notes.append(f"stopped early at step {trainer.step} (early_stop = true)")
    notes += trainer.notes + [f"warning: {w}" for w in trainer.watch.warnings]
    return StageReport(
        stage="train",
        counts={
            "steps": trainer.step,
            "images_seen": trainer.images_seen,
            "images_per_second": round(
                trainer.session_steps * config.batch_size / max(trainer.session_seconds, 1e-9)
            ),
            "dataset_images": trainer.dataset_size,
            "resumed_from_step": resumed or 0,
            "world_size": dist.world_size,
            "warnings": len(trainer.watch.warnings),
        },
        outputs=_outputs(run_dir),
        notes=notes,
    )


def _warm_start(trainer: Trainer, root: DataRoot) -> dict[str, Any]:
    """Start from the previous run's latest networks when the dataset changed and the shapes match."""
    previous = root.runs_dir / "latest"
    info = read_run_info(previous.resolve()) if previous.exists() else {}
    if not info or info.get("dataset_id") == trainer.dataset_id:
        return {}
    mismatched = [k for k in ARCH_KEYS if info["config"].get(k) != getattr(trainer.config, k)]
    if mismatched:
        trainer.notes.append(f"no warm start from {info['run']}: its {', '.join(mismatched)} differ")
        return {}
    found = trainer.latest_good(previous.resolve() / "checkpoints")
    if found is None:
        return {}
    ckpt, path = found
    trainer.load_networks(ckpt)
    log.info("warm start from %s/%s", info["run"], path.name)
    return {"parent": info["run"], "parent_dataset_id": info["dataset_id"], "parent_step": int(ckpt["step"])}


def _outputs(run_dir: Path) -> dict[str, str]:
    outputs = {"run_dir": str(run_dir), "metrics": str(run_dir / "metrics.jsonl")}
    grids = sorted(
        (int(p.stem.split("-")[1]), p) for p in (run_dir / "grids").glob("step-*.png") if p.stem[5:].isdigit()
    )
    if grids:
        outputs["grid"] = str(grids[-1][1])
    checkpoints = list_checkpoints(run_dir / "checkpoints")
    if checkpoints:
        outputs["latest_checkpoint"] = str(checkpoints[-1][1])
    if best_path(run_dir / "checkpoints").exists():
        outputs["best_checkpoint"] = str(best_path(run_dir / "checkpoints"))
    return outputs


def _skipped_report(run_dir: Path, info: dict[str, Any]) -> StageReport:
    return StageReport(
        stage="train",
        counts={"steps": info["step"], "images_seen": info.get("images_seen", 0)},
        outputs=_outputs(run_dir),
        notes=[
            f"run {run_dir.name} already {info['status']} at step {info['step']}; force = true retrains it"
        ],
        skipped=True,
    )


# ---------------------------------------------------------------------------------------------------
# python -m models.train / torchrun -m models.train


def _parse_value(text: str) -> Any:
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text  # a bare string such as cpu


def load_train_config(path: Path | None, overrides: list[str]) -> tuple[TrainConfig, str]:
    """faces.toml's [train] table (plus KEY=VALUE overrides) and its data_dir."""
    table: dict[str, Any] = {}
    data_dir = "data"
    if path is not None:
        try:
            doc = tomllib.loads(path.read_text())
        except (OSError, tomllib.TOMLDecodeError) as e:
            raise BadInputError(f"cannot read {path}: {e}") from None
        table, data_dir = dict(doc.get("train", {})), doc.get("data_dir", data_dir)
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep:
            raise BadInputError(f"--set {item!r}: write KEY=VALUE, e.g. --set steps=1000")
        table[key.strip()] = _parse_value(value.strip())
    try:
        return TrainConfig(**table), data_dir
    except ValidationError as e:
        problems = "; ".join(f"[train] {'.'.join(map(str, err['loc']))}: {err['msg']}" for err in e.errors())
        raise BadInputError(f"{path or 'settings'}: {problems}") from None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m models.train", description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", type=Path, help="faces.toml: its [train] table and data_dir")
    parser.add_argument("--data-dir", help="the data root (default: data_dir from the config, else ./data)")
    parser.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE", help="override a [train] key"
    )
    parser.add_argument("--force", action="store_true", help="retrain even if the run has finished")
    args = parser.parse_args(argv)
    main_process = os.environ.get("RANK", "0") == "0"
    logging.basicConfig(
        level=logging.INFO if main_process else logging.WARNING, format="%(levelname)s %(message)s"
    )
    try:
        config, data_dir = load_train_config(args.config, args.set)
        report = train(config, DataRoot(args.data_dir or data_dir), force=args.force)
    except BadInputError as e:
        print(f"models.train: error: {e}", file=sys.stderr)
        return 1
    if main_process:
        print(report.markdown())
    return 0


if __name__ == "__main__":
    sys.exit(main())
