"""`faces demo`: the whole pipeline, offline, against the demo gallery on 127.0.0.1, CPU-sized."""

import os
import time
from pathlib import Path

from flows.config import PipelineConfig
from flows.demo.gallery import DemoGallery

# Sized for a few minutes on 2 CPU cores: a narrow DCGAN at 64x64. The same pipeline trains the
# full-width reference model (ngf = ndf = 64) when [train] is left at its defaults.
DEMO_STEPS = 900


def demo_config(data_dir: Path, seed_url: str, steps: int) -> PipelineConfig:
    return PipelineConfig.model_validate(
        {
            "data_dir": str(data_dir),
            "scrape": {
                "seeds": [seed_url],
                "allow_networks": ["127.0.0.0/8"],  # the gallery is on loopback, which is refused by default
                "user_agent": "faces-pipeline-demo/0.1 (+http://127.0.0.1/)",
                "licence": "CC0-1.0",
            },
            # YuNet's second look scores the darker-skinned painted faces lower than real photos (real
            # 64x64 crops score 0.87 and up); a lower bar keeps the demo's dataset as varied as its gallery.
            "validate": {"min_images": 32, "min_face_score": 0.15},
            "train": {
                "ngf": 32,
                "ndf": 32,
                "batch_size": 32,
                "steps": steps,
                "lr_g": 5e-4,
                "lr_d": 2e-4,
                "checkpoint_every": 100,
                "sample_every": 100,
                "eval_every": 300,
                "device": "cpu",
            },
        }
    )


def run_demo(data_dir: Path, steps: int | None = None, keep_serving: bool = False) -> dict:
    # The demo is offline: no usage telemetry from Prefect's client or its temporary server.
    os.environ.setdefault("DO_NOT_TRACK", "1")
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    from flows.pipeline import faces_pipeline  # imports torch and Prefect: after argument parsing

    started = time.monotonic()
    with DemoGallery() as gallery:
        print(
            f"demo gallery at {gallery.base_url} ({gallery.n_faces} face photos and a few others)",
            flush=True,  # before Prefect's log lines, also when piped
        )
        cfg = demo_config(data_dir.resolve(), gallery.seed_url, steps or DEMO_STEPS)
        results = faces_pipeline(data_dir=cfg.data_dir, **cfg.stage_configs())
        if keep_serving:
            input(f"gallery still at {gallery.base_url}; press Enter to stop it ")
    _print_where(results, time.monotonic() - started)
    return results


def _print_where(results: dict, seconds: float) -> None:
    print(f"\nDemo finished in {seconds / 60:.1f} min.")
    for stage, result in results.items():
        counts = ", ".join(f"{k} {v}" for k, v in result["counts"].items())
        print(f"  {stage:<10} {counts}")
    print("\nWhere to look:")
    labels = {
        "validate": ("report", "dataset"),
        "train": ("run_dir", "best_checkpoint", "latest_checkpoint"),
        "export": ("grid", "model_card", "export"),
    }
    for stage, keys in labels.items():
        for key in keys:
            path = results.get(stage, {}).get("outputs", {}).get(key)
            if path:
                print(f"  {stage} {key}: {path}")
