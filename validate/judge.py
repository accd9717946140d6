"""Judging measured crops: the hard checks that stop the pipeline and the soft checks that quarantine.

Hard checks (a crop that does not decode or is not SxS RGB uint8; fewer than `min_images` accepted)
raise BadInputError listing the offenders. Soft checks give a crop its reasons (validate.checks
measures, this module decides, in order of first collection).
"""

from collections import Counter
from dataclasses import dataclass

from common.report import BadInputError
from validate.checks import REASONS, Measures, NearDuplicateIndex, quality_reasons
from validate.config import ValidateConfig
from validate.inputs import Crop, Sources

MAX_LISTED = 20  # offenders named in an error message


@dataclass
class Verdict:
    crop: Crop
    measures: Measures
    reasons: list[tuple[str, str]]  # (reason, detail); empty: accepted
    released: bool = False  # accepted only because a user released it


def fail_on_unusable(config: ValidateConfig, crops: list[Crop], measures: dict[str, Measures]) -> None:
    """Hard check: every crop is on disk, decodes and is SxS RGB uint8."""
    bad = []
    for c in crops:
        if c.file_sha256 is None:
            bad.append(f"{c.crop_id}: is missing ({c.path})")
        elif c.file_sha256 not in measures:
            raise RuntimeError(f"{c.path} changed while validating; run validate again")
        elif problem := measures[c.file_sha256].problem:
            bad.append(f"{c.crop_id}: {problem} ({c.path})")
    if bad:
        s = config.image_size
        raise BadInputError(
            f"{len(bad)} crop(s) cannot be used: {listing(bad)}. Every crop must be a {s}x{s} RGB uint8 PNG: "
            f"check that [validate] image_size = {s} matches [preprocess] crop_size, then rewrite the crops "
            "with `faces preprocess --force`, or remove their sources with `faces forget <sha256>`."
        )


def listing(items: list[str]) -> str:
    shown = "; ".join(items[:MAX_LISTED])
    return shown + (f"; and {len(items) - MAX_LISTED} more" if len(items) > MAX_LISTED else "")


def judge(
    config: ValidateConfig,
    crops: list[Crop],
    measures: dict[str, Measures],
    sources: Sources,
    releases: dict[str, str],
) -> list[Verdict]:
    """Soft checks, crop by crop in order of first collection, so the earliest of duplicates is kept.

    Duplicates are looked for only among crops that pass every other check: a sharp copy of a blurry
    crop is kept rather than thrown out for resembling a crop that was itself rejected.
    """
    near = NearDuplicateIndex(config.near_duplicate_distance)
    kept_pixels: dict[str, str] = {}  # pixels hash -> crop id kept
    kept_ids: list[str] = []  # near-duplicate index item -> crop id
    verdicts = []
    for c in crops:
        m = measures[c.file_sha256]
        reasons = blocked_reasons(c, sources)
        released = not reasons and releases.get(c.crop_id) == c.file_sha256
        if not reasons and not released:
            reasons = quality_reasons(m, config) or duplicate_reasons(m, kept_pixels, near, kept_ids)
        if not reasons:
            kept_pixels.setdefault(m.pixels_sha256, c.crop_id)
            near.add(m.phash)
            kept_ids.append(c.crop_id)
        verdicts.append(Verdict(c, m, reasons, released))
    return verdicts


def blocked_reasons(c: Crop, sources: Sources) -> list[tuple[str, str]]:
    if c.sha256 in sources.forgotten:
        return [("opted_out", "its source was taken down (faces forget)")]
    if c.sha256 in sources.opted_out:
        return [("opted_out", f"its source opted out ({sources.opted_out[c.sha256]})")]
    return []


def duplicate_reasons(
    m: Measures, kept_pixels: dict[str, str], near: NearDuplicateIndex, kept_ids: list[str]
) -> list[tuple[str, str]]:
    if first := kept_pixels.get(m.pixels_sha256):
        return [("duplicate", f"same pixels as {first}")]
    if hit := near.nearest(m.phash):
        item, distance = hit
        return [("near_duplicate", f"perceptual hash {distance} bits from {kept_ids[item]}")]
    return []


def fail_on_too_few(config: ValidateConfig, verdicts: list[Verdict], accepted: list[Verdict]) -> None:
    if len(accepted) >= config.min_images:
        return
    counts = Counter(r for v in verdicts for r, _ in v.reasons)
    why = ", ".join(f"{r} {counts[r]}" for r in REASONS if counts[r]) or "none"
    raise BadInputError(
        f"only {len(accepted)} of {len(verdicts)} crops passed validation, fewer than [validate] "
        f"min_images = {config.min_images} (quarantined: {why}). Collect more photos (`faces scrape`), "
        "release crops you trust (`faces validate --quarantine` lists them, `faces validate --release "
        "<crop_id>`), loosen the [validate] thresholds, or lower min_images."
    )
