"""The Trainer: one run's networks, optimisers, data and training loop, in one process.

It reads as setup, one step, checkpoints, the loop. Each step updates D once on a real and a fake
batch, then G once through the updated D, as pytorch/examples' dcgan/main.py does, with
differences that make it fast: the dataset sits on the device as uint8 (models.data), D returns
logits (models.loss: safe under bf16 autocast), D's weights get no gradients in G's step, a whole
step replays as one CUDA graph (models.cuda_graph), and the loop waits for the GPU only every
`log_every` steps, when it reads the losses back. What D sees is augmented (models.augment), with
random numbers drawn outside the step. G's average: models.ema; grids and SWD:
models.evaluate; warnings and metrics.jsonl: models.watch; checkpoint files: models.checkpoint.
Under torchrun there is one Trainer per process, and models.ddp keeps them in step.
"""

import logging
import math
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from common.report import BadInputError
from models import ddp
from models.augment import Augment
from models.checkpoint import (
    load_latest_everywhere,
    match_optimizer_flags,
    restore_rng,
    save_step_checkpoint,
)
from models.config import TrainConfig
from models.cuda_graph import GraphedStep
from models.data import DeviceDataset, check_shards, fit_images, fixed_noise, open_images, shard_seed
from models.dcgan import build_discriminator, build_generator
from models.device import pick_device, pick_precision, set_speed_flags
from models.ema import STATS_SAMPLES, AveragedGenerator
from models.evaluate import GRID_SAMPLES, NO_SWD_NOTE, Evaluator, real_sample
from models.loss import GANLoss, discriminator_score, grad_norm
from models.watch import MetricsLog, Watch, progress_message

log = logging.getLogger("models.train")

Progress = Callable[[int, int, str], None]  # on_progress(done, total, message)


class TrainingDivergedError(BadInputError):
    """The losses became NaN or Inf: the settings need changing, so retrying the same run cannot help."""


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
        self.config, self.dist = config, dist or ddp.Dist()
        self.run_dir, self.dataset_id = run_dir, dataset_id
        self.on_progress = on_progress if self.dist.is_main else None
        self.notes: list[str] = []  # for the stage's report
        self._set_up_device()
        self._load_data(images_path)
        self._build_networks()
        self._set_up_watching()

    # -- setup ----------------------------------------------------------------------------------

    def _set_up_device(self) -> None:
        """Device, precision, memory layout, and the process-wide speed settings that go with them."""
        config, dist = self.config, self.dist
        self.device = pick_device(config.device, "train", dist.local_rank if dist.enabled else None)
        self.amp_dtype, self.precision = pick_precision(config.precision, self.device)
        cuda = self.device.type == "cuda"
        # channels_last weights trip a stride check in inductor's convolution backward (PyTorch 2.11),
        # and compiled code picks its own layouts anyway.
        channels_last = cuda and config.channels_last and not config.compile
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        # Graphs replay fixed kernels on fixed memory: not with fp16's data-dependent loss scaling
        # (it reads the scale back) nor DDP's collectives.
        self.use_graphs = cuda and config.cuda_graphs and self.precision != "fp16" and not dist.enabled
        self.graphed_step = GraphedStep(self.device, self.use_graphs)
        self._threads = set_speed_flags(self.device, config.cpu_threads)  # close() restores the threads
        if config.compile and not cuda:
            self.notes.append("compile = true applies on CUDA only; trained eagerly")

    def _load_data(self, images_path: Path) -> None:
        """This process's shard of the images on the device, and a fixed real sample to evaluate by."""
        config, dist = self.config, self.dist
        images = open_images(images_path)
        self.dataset_size = len(images)
        check_shards(images_path, self.dataset_size, config.batch_size, dist.world_size)
        shard = fit_images(images[dist.rank :: dist.world_size], config.image_size, config.channels)
        self.data = DeviceDataset(
            shard,
            self.device,
            seed=config.seed,
            rank=dist.rank,
            flip=config.flip,
            memory_format=self.memory_format,
        )
        self.eval_real = real_sample(images, config)  # for SWD and the diversity reference (rank 0)

    def _build_networks(self) -> None:
        """G and D as the loop calls them (DDP, compile), their optimisers, the loss scaler, G's average."""
        config, device = self.config, self.device
        with torch.random.fork_rng(devices=[]):  # leave the caller's random state alone
            torch.manual_seed(config.seed)  # the same initial weights on every process and every rerun
            g, d = build_generator(config), build_discriminator(config)
        self.g_raw = g.to(device, memory_format=self.memory_format)
        self.d_raw = d.to(device, memory_format=self.memory_format)
        # Copied before wrapping: the average stays a plain network (no SyncBatchNorm).
        stats_noise = fixed_noise(config.seed, config.nz, STATS_SAMPLES, device, salt=3)
        self.ema = AveragedGenerator(self.g_raw, config.ema_decay, stats_noise, self.autocast)
        self.g = ddp.wrap(self.g_raw, device, self.dist, config.sync_batchnorm, config.compile)
        self.d = ddp.wrap(self.d_raw, device, self.dist, config.sync_batchnorm, config.compile)
        fused = {"fused": True} if device.type == "cuda" else {}  # one kernel per step for all parameters
        if self.use_graphs:
            fused["capturable"] = True  # the step count lives on the GPU, so a replay advances it
        betas = (config.beta1, config.beta2)
        self.opt_g = torch.optim.Adam(self.g_raw.parameters(), lr=config.lr_g, betas=betas, **fused)
        self.opt_d = torch.optim.Adam(self.d_raw.parameters(), lr=config.lr_d, betas=betas, **fused)
        self.scaler = torch.amp.GradScaler(device.type, enabled=self.precision == "fp16")
        self.augment = Augment(config, device)
        self.loss = GANLoss(
            self.d, self.d_raw, config.loss, config.label_smoothing, self.scaler, self.autocast, self.augment
        )

    def _set_up_watching(self) -> None:
        """The random stream, evaluation (main process), warnings, metrics log and the run's counters."""
        config, dist, run_dir = self.config, self.dist, self.run_dir
        self.gen = torch.Generator(self.device).manual_seed(shard_seed(config.seed, dist.rank))
        self.eval_noise = fixed_noise(config.seed, config.nz, len(self.eval_real), self.device, salt=2)  # SWD
        self.watch = Watch(config)
        self.metrics, self.evaluator = None, None
        if dist.is_main:
            self.metrics = MetricsLog(
                run_dir / "metrics.jsonl", run_dir / "tensorboard" if config.tensorboard else None
            )
            grid_noise = fixed_noise(config.seed, config.nz, GRID_SAMPLES, self.device, salt=1)
            self.evaluator = Evaluator(
                run_dir, config.seed, self.eval_real, grid_noise, self.eval_noise, self.watch, self.metrics
            )
            if self.evaluator.swd_function is None:
                self.notes.append(NO_SWD_NOTE)
        self.step, self.train_seconds = 0, 0.0
        self.session_steps, self.session_seconds = 0, 0.0
        self.best_swd = math.inf
        self.last_row: dict[str, Any] = {}
        self._finite = torch.ones((), dtype=torch.bool, device=self.device)

    def autocast(self) -> torch.autocast:
        # Autocast's cache of cast weights would be baked into a captured graph and go stale.
        return torch.autocast(
            self.device.type,
            dtype=self.amp_dtype,
            enabled=self.amp_dtype is not None,
            cache_enabled=not self.use_graphs,
        )

    # -- one step -------------------------------------------------------------------------------

    def real_batch(self) -> torch.Tensor:
        """This step's real images: the step-th slice of this process's share of the global batch."""
        size = self.config.batch_size // self.dist.world_size
        return self.data.batch(self.data.rows(self.step * size, size), self.gen)

    def train_step(self, measure: bool = False) -> dict[str, torch.Tensor]:
        """One D update and one G update. With `measure`, also returns the figures to log (as tensors)."""
        real = self.real_batch()
        z = torch.randn(len(real), self.config.nz, 1, 1, device=self.device, generator=self.gen)
        draws = self.augment.draw(len(real), self.gen)  # none when augmentation is off
        inputs = (real, z, draws)
        figures = self.graphed_step(self._update, inputs, measure, variant=self.augment.active)  # or a replay
        self.ema.update(self.step)
        self.step += 1
        return figures

    def _update(
        self, real: torch.Tensor, z: torch.Tensor, draws: torch.Tensor, measure: bool
    ) -> dict[str, torch.Tensor]:
        """D's turn on the real and a fake batch, then G's through the updated D (models.loss)."""
        with self.autocast():
            fake = self.g(z)
        self.opt_d.zero_grad(set_to_none=True)
        loss_d, real_logits, fake_logits = self.loss.discriminator(real, fake, draws)
        grad_norm_d = grad_norm(self.d_raw) if measure else None
        self.scaler.step(self.opt_d)
        self.opt_g.zero_grad(set_to_none=True)
        loss_g = self.loss.generator(fake, draws)
        self.scaler.step(self.opt_g)
        self.scaler.update()
        self._finite &= torch.isfinite(loss_d + loss_g)  # read back only at boundaries
        if not measure:
            return {}
        score = discriminator_score(self.config.loss)
        return {
            "loss_d": loss_d,
            "loss_g": loss_g,
            "d_x": score(real_logits).mean(),
            "d_g_z": score(fake_logits).mean(),
            "grad_norm_d": grad_norm_d,
            "grad_norm_g": grad_norm(self.g_raw),
        }

    def sample(self, z: torch.Tensor, batch: int = 256) -> torch.Tensor:
        """Images from G's average (eval mode), as float in [-1, 1]."""
        return self.ema.sample(z, self.step, batch)

    @property
    def images_seen(self) -> int:
        return self.step * self.config.batch_size

    # -- checkpoints ----------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        """The checkpoint (docs/DESIGN.md). Collective under DDP: every process's RNG state is gathered."""
        rng_states = ddp.gather(self.gen.get_state(), self.dist)
        return {
            "generator": self.g_raw.state_dict(),
            "discriminator": self.d_raw.state_dict(),
            "generator_ema": self.ema.state_dict(self.step),
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
                "augment_p": float(self.augment.p),
            },
        }

    def load_networks(self, ckpt: dict[str, Any]) -> None:
        self.g_raw.load_state_dict(ckpt["generator"])
        self.d_raw.load_state_dict(ckpt["discriminator"])
        self.ema.load_state_dict(ckpt["generator_ema"])

    def load_state(self, ckpt: dict[str, Any]) -> None:
        """Everything a checkpoint holds, so training continues exactly where it stopped."""
        self.graphed_step.drop()  # the optimisers' state tensors are about to be replaced
        self.load_networks(ckpt)
        for opt, key in ((self.opt_g, "opt_g"), (self.opt_d, "opt_d")):
            opt.load_state_dict(match_optimizer_flags(ckpt[key], opt))
        if self.scaler.is_enabled() and ckpt["scaler"]:
            self.scaler.load_state_dict(ckpt["scaler"])
        self.step = int(ckpt["step"])
        metrics = ckpt.get("metrics") or {}
        self.train_seconds = float(metrics.get("train_seconds", 0.0))
        if metrics.get("best_swd") is not None:
            self.best_swd = float(metrics["best_swd"])
        if metrics.get("augment_p") is not None:  # an adaptive p goes on from where it was
            self.augment.set_p(float(metrics["augment_p"]))
        note = restore_rng(
            self.gen, ckpt["rng"], self.dist, shard_seed(self.config.seed, self.dist.rank, self.step)
        )
        if note:
            self.notes.append(note)
        self._finite.fill_(True)

    def resume(self) -> int | None:
        """Load the run's latest good checkpoint; the step it resumes from, or None for a new run."""
        found = load_latest_everywhere(self.checkpoint_dir, self.device, self.dist)
        if found is not None:
            self.load_state(found[0])
            log.info("resumed %s from %s (step %d)", self.run_dir.name, found[1].name, self.step)
        if self.metrics is not None:  # rows a killed run logged past its checkpoint, or before its first
            self.metrics.truncate(self.step)
        return None if found is None else self.step

    def _checkpoint(self, best: bool) -> None:
        """Save step-<n>.pt (and best.pt: when `best`, or always without SWD), keep the newest few."""
        state = self.state_dict()  # every process: the RNG states are gathered
        if not self.dist.is_main or self.evaluator is None:
            return
        no_swd = self.evaluator.swd_function is None  # no quality metric to choose by: best is the newest
        save_step_checkpoint(self.checkpoint_dir, state, self.config.keep_checkpoints, best or no_swd)

    @property
    def checkpoint_dir(self) -> Path:
        return self.run_dir / "checkpoints"

    # -- the loop -------------------------------------------------------------------------------

    def run(self, until: int) -> str:
        """Train up to step `until`: "finished", or "stopped_early" after a warning with early_stop."""
        config = self.config
        bar = tqdm(
            total=until,
            initial=self.step,
            unit="step",
            dynamic_ncols=True,
            # On a terminal only: in logs (Prefect workers, CI) a redrawn bar is thousands of lines.
            disable=not (config.progress_bar and self.dist.is_main and sys.stderr.isatty()),
        )
        self._window = (time.perf_counter(), self.step)
        try:
            while self.step < until:
                next_step = self.step + 1
                figures = self.train_step(measure=next_step % config.log_every == 0 or next_step == until)
                bar.update(1)
                due = {
                    "checkpoint": self.step % config.checkpoint_every == 0,
                    "sample": self.step % config.sample_every == 0,
                    "eval": self.step % config.eval_every == 0,
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
        if due["sample"] and self.evaluator is not None:
            row |= self.evaluator.grid(self.step, self.sample)
        improved = False
        if due["eval"] and self.evaluator is not None:
            row |= self.evaluator.swd(self.sample)
            # A line in the run's log at each evaluation: where no progress bar shows (workers, files).
            log.info(progress_message(row, until))
            improved = row.get("swd", math.inf) < self.best_swd
            self.best_swd = min(self.best_swd, row.get("swd", math.inf))
        stop = ddp.any_rank(self.config.early_stop and self.watch.warned, self.device, self.dist)
        self.last_row = row
        if self.metrics is not None:  # before the checkpoint: a resumed run drops rows past its checkpoint
            self.metrics.write(row)
        if due["checkpoint"] or improved or stop:
            self._checkpoint(improved)
        if self.on_progress is not None:
            self.on_progress(self.step, until, progress_message(row, until))
        if stop:
            log.warning("early_stop: stopping at step %d", self.step)
        self._window = (time.perf_counter(), self.step)
        return stop

    def _check_finite(self, checked_step: int, step: int) -> None:
        """Raise TrainingDivergedError (after restoring the last good checkpoint) on NaN or Inf losses."""
        if not ddp.any_rank(not bool(self._finite), self.device, self.dist):
            return
        found = load_latest_everywhere(self.checkpoint_dir, self.device, self.dist)
        restored = "no checkpoint had been written yet"
        if found is not None:
            self.load_state(found[0])
            restored = f"restored the last good checkpoint {found[1].name} (step {self.step}), which stays"
            restored += " the run's latest"
        raise TrainingDivergedError(
            f"training diverged: the losses became NaN or Inf between steps {checked_step} and {step}; "
            f"{restored}. Lower lr_d and lr_g, try "
            "loss = 'hinge' or precision = 'fp32', then train again"
        )

    def _figures(self, figures: dict[str, torch.Tensor], images_per_second: float) -> dict[str, Any]:
        """The step's figures, averaged over processes, as a metrics row's loss and speed columns."""
        values = ddp.mean(torch.stack([v.float() for v in figures.values()]), self.dist).tolist()
        row = dict(zip(figures, values, strict=True))
        row["grad_norm_d"] /= self.scaler.get_scale()  # 1.0 unless fp16 loss scaling is on
        row["grad_norm_g"] /= self.scaler.get_scale()
        row["images_per_second"] = round(images_per_second, 1)
        row["seconds"] = round(self.train_seconds, 2)
        row["overpowered"] = self.watch.losses(self.step, row["loss_d"], row["d_g_z"])
        return row | self.augment.figures(self.dist)

    def close(self) -> None:
        if self.metrics is not None:
            self.metrics.close()
        torch.set_num_threads(self._threads)
