"""`faces demo`: the whole pipeline, offline, against the demo gallery on 127.0.0.1, CPU-sized.

Its settings live in demo/demo.toml: the gallery's ([gallery]) and the stage tables it overrides.
"""

import os
import time
from pathlib import Path

from pydantic import Field

from common.config import StrictModel, parse_model, read_toml
from demo.gallery import DemoGallery
from flows import local_server
from flows.config import PipelineConfig

DEMO_TOML = Path(__file__).with_name("demo.toml")


class GallerySettings(StrictModel):
    """Table [gallery] of demo.toml: the website the demo crawls."""

    faces: int = Field(120, ge=1, description="Face photos on the site.")
    seed: int = Field(0, description="The same seed draws the same faces.")
    port: int = Field(0, ge=0, le=65535, description="Port on 127.0.0.1; 0 picks a free one.")
    crawl_delay: float = Field(0.05, ge=0, description="The robots.txt Crawl-delay, seconds.")


def load_demo(path: Path = DEMO_TOML) -> tuple[GallerySettings, PipelineConfig]:
    """demo.toml as the gallery's settings and the pipeline's; a bad key is an error naming it."""
    tables = read_toml(path)
    gallery = parse_model(GallerySettings, tables.pop("gallery", {}), str(path), "gallery")
    return gallery, parse_model(PipelineConfig, tables, str(path))


def demo_config(
    cfg: PipelineConfig, data_dir: Path, seed_url: str, steps: int | None = None
) -> PipelineConfig:
    """The demo's settings for one run: its data root, the gallery as the only seed, `steps` if given."""
    cfg = cfg.model_copy(deep=True)
    cfg.data_dir = str(data_dir)
    cfg.scrape.seeds = [seed_url]
    if steps is not None:
        cfg.train.steps = steps
    return cfg


def run_demo(data_dir: Path, steps: int | None = None, keep_serving: bool = False) -> dict:
    """Serve the gallery, run all five stages on it into `data_dir`, print where the results are."""
    # The demo is offline: no usage telemetry from Prefect's client or its temporary server.
    os.environ.setdefault("DO_NOT_TRACK", "1")
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    gallery_settings, settings = load_demo()  # before the gallery starts: a typo fails at once
    local_server.start_if_needed()
    from flows.pipeline import faces_pipeline  # imports torch and Prefect: after the settings are read

    started = time.monotonic()
    with DemoGallery(
        gallery_settings.faces,
        gallery_settings.seed,
        port=gallery_settings.port,
        crawl_delay=gallery_settings.crawl_delay,
    ) as gallery:
        print(
            f"demo gallery at {gallery.base_url} ({gallery.n_faces} face photos and a few others)",
            flush=True,  # before Prefect's log lines, also when piped
        )
        cfg = demo_config(settings, data_dir.resolve(), gallery.seed_url, steps)
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
