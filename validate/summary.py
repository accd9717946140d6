"""What a validation run reports: counts by reason, the snapshot's report.json, the StageReport."""

import time
from collections import Counter
from pathlib import Path

from common.clock import now_iso
from common.layout import DataRoot
from common.report import StageReport
from validate import snapshot
from validate.checks import REASONS
from validate.config import ValidateConfig
from validate.judge import Verdict


def counts_of(verdicts: list[Verdict]) -> dict[str, int]:
    by_reason = Counter(r for v in verdicts for r, _ in v.reasons)
    quarantined = sum(1 for v in verdicts if v.reasons)
    return {
        "crops": len(verdicts),
        "accepted": len(verdicts) - quarantined,
        "quarantined": quarantined,
        "released": sum(1 for v in verdicts if v.released),
        **{r: by_reason.get(r, 0) for r in REASONS},
    }


def snapshot_report(
    config: ValidateConfig, dataset_id: str, fingerprint: str, verdicts: list[Verdict]
) -> dict:
    """report.json of a new snapshot (validate.snapshot adds which crops each contact sheet shows)."""
    return {
        "dataset_id": dataset_id,
        "created_at": now_iso(),
        "image_size": config.image_size,
        "input_fingerprint": fingerprint,
        "config": config.model_dump(mode="json"),
        "counts": counts_of(verdicts),
        "quarantined": [
            {
                "crop_id": v.crop.crop_id,
                "sha256": v.crop.sha256,
                "reasons": [r for r, _ in v.reasons],
                "detail": "; ".join(f"{r}: {d}" for r, d in v.reasons),
            }
            for v in verdicts
            if v.reasons
        ],
    }


def outputs_of(folder: Path) -> dict[str, str]:
    return {
        "dataset": str(folder),
        "images": str(folder / "images.npy"),
        "report": str(folder / "report.md"),
        "contact sheet": str(folder / "accepted.png"),
        "card": str(folder / "README.md"),
    }


def checks_table(config: dict, counts: dict[str, int]) -> list[dict]:
    return [
        {"check": name, "fails when": rule, "quarantined": counts.get(name, 0)}
        for name, rule in snapshot.thresholds(config)
    ]


def stage_report(
    config: ValidateConfig,
    root: DataRoot,
    dataset_id: str,
    verdicts: list[Verdict],
    made: bool,
    pruned: list[str],
    start: float,
) -> StageReport:
    folder = root.dataset_dir(dataset_id)
    counts = counts_of(verdicts)
    notes = [
        f"new snapshot {dataset_id}"
        if made
        else f"no new snapshot: the accepted crops are unchanged, dataset {dataset_id} is still current"
    ]
    notes += [f"removed old snapshot {p} (retention)" for p in pruned]
    if counts["quarantined"]:
        notes.append("list quarantined crops with `faces validate --quarantine [reason]`")
    return StageReport(
        stage="validate",
        counts=counts,
        outputs=outputs_of(folder),
        notes=notes,
        tables={"checks": checks_table(config.model_dump(mode="json"), counts)},
        seconds=time.monotonic() - start,
    )


def unchanged_report(root: DataRoot, dataset_id: str, start: float) -> StageReport:
    folder = root.dataset_dir(dataset_id)
    report = snapshot.load_report(folder)
    return StageReport(
        stage="validate",
        counts=report["counts"],
        outputs=outputs_of(folder),
        notes=[f"inputs unchanged: dataset {dataset_id} is still current; no new snapshot"],
        tables={"checks": checks_table(report["config"], report["counts"])},
        seconds=time.monotonic() - start,
        skipped=True,
    )
