"""MODEL_CARD.md: what the generator is, how it was trained, how good it is, where its data came from,
what it is for and not for, and how to take an image down.

`model_card` builds the text from its sections; `write_model_card` gathers the inputs (run.json,
the dataset's index.csv) and writes the file.
"""

import csv
import json
from collections import Counter
from pathlib import Path
from urllib.parse import urlsplit

from common.files import atomic_write_text, read_json
from export.evaluation import metrics_rows, why_gone
from models.taken_down import DESCENDANT, SNAPSHOT_GONE, TRAINED_ON, marks

MODEL_NAMES = {"dcgan": "DCGAN", "mlp": "fully connected (MLP) GAN"}

INTENDED_USE = [
    "## Intended use",
    "",
    "Research, teaching and demonstrations of generative models: sample grids, interpolations, "
    "benchmarks of training speed and quality. The images are of people who do not exist, but they "
    "are learned from photographs of people who do.",
    "",
    "Not for: identifying, verifying or profiling anyone; making images that pass as real photographs "
    "of real people (deception, impersonation, fake profiles); training or testing face recognition; "
    "any decision about a person.",
]

TAKEDOWN = [
    "## Taking an image down",
    "",
    "Anyone whose photo is in the data can ask for it to be removed. The operator runs",
    "",
    "```",
    "faces forget <image URL | page URL | sha256>",
    "```",
    "",
    "which deletes the image, its crops and every dataset snapshot that holds it, records the URL so it "
    "is never fetched again, and builds a new snapshot without it. A model already trained on it keeps "
    "what it learned: retrain (the nightly run does) and export again, then delete this export.",
]


def _fmt(v: float | None) -> str:
    return "n/a" if v is None else f"{v:.2f}"


def read_index(dataset_dir: Path) -> list[dict]:
    """The dataset's per-image provenance (index.csv), or [] for a snapshot without one."""
    path = dataset_dir / "index.csv"
    if not path.is_file():
        return []
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def _summary(run_info: dict, ckpt: dict, exported: dict, dataset: dict, gone: bool) -> list[str]:
    """The title, the sample grid and one sentence: which model, which data, which checkpoint."""
    train_config = ckpt["config"]
    shows = f"images of {dataset['holds']}" if _ready_made(dataset) else "face images"
    shows = "images" if gone else shows  # what the gone dataset held is not known
    return [
        f"# Model card: `{run_info.get('run', exported['run'])}`",
        "",
        "![samples](grid.png)",
        "",
        f"A {MODEL_NAMES.get(train_config['model'], train_config['model'])} that generates "
        f"{train_config['image_size']}x{train_config['image_size']} {shows}, "
        f"trained on dataset `{ckpt['dataset_id']}`. "
        f"Exported {exported['created']} from `{exported['checkpoint']}` (step {ckpt['step']}).",
    ]


def _training(run_info: dict, ckpt: dict, n_images: int | None, sources: int) -> list[str]:
    """Dataset size, steps, time, device, dates, warm start and the full [train] config.

    Steps and time are the run's (run.json: a resumed run's whole count), beside the exported
    checkpoint's step (best.pt may be older); the config is the one the run last trained with.
    """
    ckpt_metrics = ckpt.get("metrics") or {}
    seconds = run_info.get("train_seconds", ckpt_metrics.get("train_seconds"))
    config = run_info.get("config") or ckpt["config"]
    side, channels = config["image_size"], "RGB" if config["channels"] == 3 else "grayscale"
    held = f"{n_images} images, trained at {side}x{side} px {channels}"
    held += f", from {sources} distinct source images" if sources else ""
    if n_images is None:  # the snapshot is gone: another one's size would not be this run's
        held = f"gone, its size and sources not known; trained at {side}x{side} px {channels}"
    return [
        "## Training",
        "",
        "| | |",
        "|---|---|",
        f"| dataset | `{ckpt['dataset_id']}` ({held}) |",
        f"| steps trained | {run_info.get('step', ckpt['step'])} "
        f"({run_info.get('images_seen', ckpt_metrics.get('images_seen', 'n/a'))} images seen) |",
        f"| exported checkpoint | step {ckpt['step']} "
        f"({ckpt_metrics.get('images_seen', 'n/a')} images seen) |",
        f"| training time | {_fmt(seconds / 3600 if seconds else None)} h ({_fmt(seconds)} s) |",
        f"| device | {run_info.get('device', 'unknown')}, {run_info.get('precision', '')}, "
        f"{run_info.get('world_size', 1)} process(es) |",
        f"| started / finished | {run_info.get('started', '?')} / {run_info.get('finished', '?')} |",
        f"| warm start from | {run_info.get('parent') or 'none'} |",
        "",
        "<details><summary>Config (<code>[train]</code>)</summary>",
        "",
        "```json",
        json.dumps(config, indent=2, sort_keys=True),
        "```",
        "",
        "</details>",
    ]


def _quality(result: dict, stand_in: str | None = None) -> list[str]:
    """How each metric is read, then the table of generated against real figures (`stand_in`: the
    snapshot they were measured on when the run's own is gone)."""
    lines = [
        "## Quality",
        "",
        "Sliced Wasserstein distance as ProGAN measures it (x1000, lower is better): "
        f"{result['swd']['images']} generated images against as many real ones; the noise floor compares "
        "two disjoint halves of the "
        f"real images ({result['swd_noise_floor']['images']} each): a generator cannot be expected to "
        "score below it. "
        "MS-SSIM between random pairs of images: higher than the real figure means less diverse samples "
        "(mode collapse). Memorisation: the pixel distance from a sample to its nearest training crop, "
        "beside the same distance between real crops; much smaller means copied faces "
        "(see `memorisation.png`).",
        "",
        "| metric | generated | real (noise floor) |",
        "|---|---:|---:|",
    ]
    lines += [
        f"| {r['metric']} | {r['generated']} | {'' if r['real'] is None else r['real']} |"
        for r in metrics_rows(result)
    ]
    if stand_in:
        lines[2:2] = [
            f"Real figures, and the crops `memorisation.png` compares samples with, come from the latest "
            f"snapshot `{stand_in}`, not from the run's own dataset (gone).",
            "",
        ]
    if "fid_kid" not in result:
        lines += ["", "FID/KID: not measured (set `[export] inception_weights` to a local Inception file)."]
    return lines + ["", "![training](training.png)"]


def _data_sources(dataset_dir: Path, index: list[dict]) -> list[str]:
    """Images per source host and per licence, and where the per-image provenance is."""
    hosts = Counter(
        urlsplit(r.get("source_url") or "").hostname
        or urlsplit(r.get("page_url") or "").hostname
        or "(local)"
        for r in index
    )
    licences = Counter(r.get("licence") or "(unknown)" for r in index)
    lines = ["## Data sources", "", "| host | images |", "|---|---:|"]
    lines += [f"| {h} | {n} |" for h, n in hosts.most_common()] or ["| (no index.csv) | |"]
    lines += ["", "| licence | images |", "|---|---:|"]
    lines += [f"| {lic} | {n} |" for lic, n in licences.most_common()] or ["| (no index.csv) | |"]
    return lines + [
        "",
        f"Per-image provenance (source URL, page, licence, fetch time): `{dataset_dir / 'index.csv'}`.",
    ]


def _data_gone(dataset_id: str, why: str, stand_in: str, n_images: int) -> list[str]:
    """The run's own snapshot is gone: say so, and that the figures come from another one."""
    return [
        "## The training data is gone",
        "",
        f"The dataset this model was trained on, `{dataset_id}`, is no longer under `datasets/`: {why}. "
        "Its size, sources, licences and contents are not known any more, so this card does not show them. "
        f"The quality figures were measured against the latest snapshot, `{stand_in}` ({n_images} images), "
        "instead: another dataset, not necessarily the one this model learnt from.",
    ]


def _sources_gone(dataset_id: str, stand_in: str) -> list[str]:
    return [
        "## Data sources",
        "",
        f"Not known: the per-image provenance (index.csv) went with the dataset `{dataset_id}`. The latest "
        f"snapshot's sources are on its own card (`datasets/{stand_in}/README.md`); they are not this "
        "model's training data.",
    ]


def _taken_down(marks: list[dict]) -> list[str]:
    """The run learnt from an image since taken down (models.taken_down): it must be retrained."""
    why = {
        TRAINED_ON: "its dataset held an image since taken down",
        SNAPSHOT_GONE: "its dataset, already gone then, may have held an image since taken down",
        DESCENDANT: "it was warm-started from run `{parent}`, which learnt from an image since taken down",
    }
    lines = ["## Taken down since", ""]
    lines += [f"- {m['at']}: " + why.get(m.get("kind", ""), why[TRAINED_ON]).format(**m) for m in marks]
    return lines + [
        "",
        "A model cannot forget one face: retrain on the current data (no run is warm-started from this "
        "one) and export again, then delete this export.",
    ]


def _ready_made(dataset: dict) -> bool:
    """A ready-made set (`faces dataset`), not crawled faces: its report.json says what it holds."""
    return dataset.get("kind") == "ready-made"


def _ready_made_sections(dataset: dict, image_size: int) -> list[str]:
    """Intended use and limitations for a ready-made set: it is not of faces, and not crawled."""
    return [
        "## Intended use",
        "",
        "Research, teaching and demonstrations of generative models: sample grids, interpolations, "
        "benchmarks of training speed and quality. Not for any decision about a person.",
        "",
        "## Limitations",
        "",
        f"- The data is the ready-made set `{dataset['name']}` ({dataset['holds']}, read from "
        f"`{dataset['source']}`); samples inherit its gaps and biases.",
        f"- At {image_size} px, fine detail is coarse; artefacts are common.",
        "- Metrics without a pretrained network (SWD, MS-SSIM) measure statistics of patches, not realism "
        "as a person judges it.",
    ]


def _limitations(image_size: int) -> list[str]:
    """Who the data leaves out, what the filters drop, what the resolution and the metrics cannot show."""
    return [
        "## Limitations",
        "",
        "- The data is whatever the crawled sites publish: it over-represents the people those sites show "
        "(often adults, lighter skin, Western studio or press photography, smiling or neutral frontal poses) "
        "and under-represents others (children, older people, darker skin, head coverings, glasses, "
        "disabilities, profile views, low light). Samples inherit those gaps and can amplify them.",
        "- Only faces that the detector found, aligned and passed the quality checks are in it: blurred, "
        "occluded, small or strongly turned faces are filtered out.",
        f"- At {image_size} px, fine detail (teeth, eyes, hair) is coarse; artefacts are common.",
        "- A licence recorded per image is what the source page said; it is not legal advice. Check the "
        "licences (Data sources) before publishing samples.",
        "- Metrics without a pretrained network (SWD, MS-SSIM) measure statistics of patches, not realism "
        "as a person judges it; SWD ignores a colour shift of the whole set by design.",
    ]


def model_card(
    run_info: dict,
    ckpt: dict,
    dataset_dir: Path,
    n_images: int,
    index: list[dict],
    result: dict,
    exported: dict,
    dataset: dict | None = None,
    gone: str | None = None,
    marks: list[dict] | None = None,
) -> str:
    """The card's markdown: `exported` is export.json's content, `result` metrics.json's, `dataset` the
    snapshot's report.json (which says what a ready-made set holds). `gone`: why the run's own snapshot
    is gone, when `dataset_dir` is the latest one standing in for it; `marks`: the run's takedown marks."""
    dataset, size, own = dataset or {}, ckpt["config"]["image_size"], ckpt["dataset_id"]
    use = (
        _ready_made_sections(dataset, size)
        if _ready_made(dataset)
        else INTENDED_USE + [""] + _limitations(size)
    )
    sources = len({r.get("sha256") for r in index if r.get("sha256")})
    sections = [
        _summary(run_info, ckpt, exported, dataset, gone is not None),
        *([_data_gone(own, gone, dataset_dir.name, n_images)] if gone else []),
        *([_taken_down(marks)] if marks else []),
        _training(run_info, ckpt, None if gone else n_images, sources),
        _quality(result, dataset_dir.name if gone else None),
        _sources_gone(own, dataset_dir.name) if gone else _data_sources(dataset_dir, index),
        use,
        TAKEDOWN,
    ]
    lines = sections[0]
    for section in sections[1:]:
        lines = lines + [""] + section
    return "\n".join(lines) + "\n"


def write_model_card(
    out: Path, run_dir: Path, ckpt: dict, dataset_dir: Path, n_images: int, result: dict, info: dict
) -> None:
    """MODEL_CARD.md in `out`, from the run's run.json and the dataset's index.csv and report.json.

    When the run's own snapshot is gone (`dataset_dir` is the latest one, export.evaluation.find_dataset),
    nothing of the stand-in describes the training data: only its metrics are shown, and said to be its."""
    gone = None if dataset_dir.name == ckpt["dataset_id"] else why_gone(run_dir, ckpt["dataset_id"])
    index = [] if gone else read_index(dataset_dir)
    dataset = {} if gone else read_json(dataset_dir / "report.json")
    card = model_card(
        read_json(run_dir / "run.json"),
        ckpt,
        dataset_dir,
        n_images,
        index,
        result,
        info,
        dataset,
        gone,
        marks(run_dir),
    )
    atomic_write_text(out / "MODEL_CARD.md", card)
