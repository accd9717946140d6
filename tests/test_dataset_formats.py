"""`faces dataset`: ready-made image sets (folders, MNIST idx, mnist.npz, CIFAR batches, arrays) become
snapshots with the right shapes, channels and labels; bad files are named with the fix; kills lose nothing."""

import csv
import gzip
import json
import os
import pickle
import struct
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from common.layout import DataRoot
from common.report import BadInputError
from tests.website import pixels
from validate.config import ValidateConfig
from validate.ready_made import build_dataset

REPO = Path(__file__).resolve().parents[1]
CONFIG = ValidateConfig(min_images=4)


def digits(n: int, size: int = 28, seed: int = 0) -> np.ndarray:
    """Distinct grey pictures: random strokes on black, like handwritten digits in spirit."""
    rng = np.random.default_rng(seed)
    out = np.zeros((n, size, size), np.uint8)
    for i in range(n):
        for _ in range(4):
            x1, y1, x2, y2 = (int(v) for v in rng.integers(3, size - 3, 4))
            cv2.line(out[i], (x1, y1), (x2, y2), 255, 2)
    return out


def picture(seed: int, size: int = 40) -> np.ndarray:
    """A BGR picture with edges: smooth colours crossed by thick lines, distinct per seed."""
    image, rng = pixels(size, size, seed).copy(), np.random.default_rng(seed)
    for _ in range(3):
        x1, y1, x2, y2 = (int(v) for v in rng.integers(2, size - 2, 4))
        cv2.line(image, (x1, y1), (x2, y2), tuple(int(c) for c in rng.integers(0, 256, 3)), 3)
    return image


def idx(array: np.ndarray, magic: int) -> bytes:
    return struct.pack(">I", magic) + b"".join(struct.pack(">I", d) for d in array.shape) + array.tobytes()


def mnist_folder(tmp_path: Path, n: int = 12) -> tuple[Path, np.ndarray, np.ndarray]:
    folder = tmp_path / "mnist"
    folder.mkdir()
    images, labels = digits(n), np.arange(n, dtype=np.uint8) % 10
    (folder / "train-images-idx3-ubyte.gz").write_bytes(gzip.compress(idx(images, 0x803)))
    (folder / "train-labels-idx1-ubyte").write_bytes(idx(labels, 0x801))
    return folder, images, labels


def snapshot_of(root: DataRoot) -> tuple[np.ndarray, list[dict], dict]:
    folder = root.latest_dataset.resolve()
    with open(folder / "index.csv", newline="") as f:
        index = list(csv.DictReader(f))
    return np.load(folder / "images.npy"), index, json.loads((folder / "report.json").read_text())


def test_mnist_idx_files_become_a_one_channel_snapshot_with_labels(tmp_path):
    folder, images, labels = mnist_folder(tmp_path)
    root = DataRoot(tmp_path / "data")

    report = build_dataset(folder, root, CONFIG, name="digits", licence="CC BY-SA 3.0")

    assert report.counts["accepted"] == 12
    stored, index, meta = snapshot_of(root)
    assert stored.shape == (12, 28, 28, 1) and np.array_equal(stored[..., 0], images)
    assert [r["label"] for r in index] == [str(v) for v in labels]
    assert index[0]["crop_id"] == "train-images-idx3-ubyte.gz:0" and index[0]["licence"] == "CC BY-SA 3.0"
    assert (meta["holds"], meta["channels"], meta["flip"]) == ("MNIST digits", 1, False)
    card = (root.latest_dataset / "README.md").read_text()
    assert "12 images of MNIST digits (`digits`), 28x28 grey" in card and "face" not in card.split("##")[0]
    assert (root.latest_dataset / "accepted.png").is_file()

    resized = build_dataset(folder, root, CONFIG, name="digits", size=32)
    assert snapshot_of(root)[0].shape == (12, 32, 32, 1)
    assert resized.outputs["dataset"] != report.outputs["dataset"]


def test_the_same_set_gives_the_same_snapshot_and_is_not_written_twice(tmp_path):
    folder, _, _ = mnist_folder(tmp_path)
    root = DataRoot(tmp_path / "data")
    first = build_dataset(folder, root, CONFIG, name="digits")
    mtime = (Path(first.outputs["dataset"]) / "images.npy").stat().st_mtime_ns
    again = build_dataset(folder, root, CONFIG, name="digits")
    assert again.outputs["dataset"] == first.outputs["dataset"]
    assert "already holds exactly these images" in again.notes[0]
    assert (Path(first.outputs["dataset"]) / "images.npy").stat().st_mtime_ns == mtime


def test_keras_mnist_npz_reads_train_then_test_with_labels(tmp_path):
    path = tmp_path / "mnist.npz"
    x_train, x_test = digits(6, seed=1), digits(4, seed=2)
    np.savez(path, x_train=x_train, y_train=np.arange(6), x_test=x_test, y_test=np.arange(4) + 5)
    root = DataRoot(tmp_path / "data")

    build_dataset(path, root, CONFIG, name="keras digits")

    stored, index, meta = snapshot_of(root)
    assert stored.shape == (10, 28, 28, 1)
    assert np.array_equal(stored[:6, ..., 0], x_train) and np.array_equal(stored[6:, ..., 0], x_test)
    assert [r["label"] for r in index] == ["0", "1", "2", "3", "4", "5", "5", "6", "7", "8"]
    assert index[6]["crop_id"] == "x_test:0" and meta["flip"] is False


def test_cifar_python_batches_become_rgb_snapshots_with_class_names(tmp_path):
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    images = np.stack([pixels(32, 32, seed=i)[:, :, ::-1] for i in range(8)])  # RGB
    rows = images.transpose(0, 3, 1, 2).reshape(8, 3072)  # R, G and B planes, as CIFAR stores them
    batch = {b"data": rows, b"labels": [i % 2 for i in range(8)], b"batch_label": b"training batch 1 of 5"}
    (folder / "data_batch_1").write_bytes(pickle.dumps(batch, protocol=2))
    (folder / "batches.meta").write_bytes(pickle.dumps({b"label_names": [b"airplane", b"cat"]}, protocol=2))
    root = DataRoot(tmp_path / "data")

    build_dataset(folder, root, CONFIG, name="cifar")

    stored, index, meta = snapshot_of(root)
    assert stored.shape == (8, 32, 32, 3) and np.array_equal(stored, images)
    assert [r["label"] for r in index] == ["airplane", "cat"] * 4
    assert (meta["holds"], meta["flip"], meta["labels"]) == (
        "CIFAR-10 images",
        True,
        {"airplane": 4, "cat": 4},
    )

    build_dataset(folder, root, CONFIG, name="cifar grey", channels=1)
    grey = snapshot_of(root)[0]
    assert grey.shape == (8, 32, 32, 1)
    assert np.abs(grey[0, ..., 0].astype(int) - cv2.cvtColor(images[0], cv2.COLOR_RGB2GRAY)).max() <= 1


class RunsCode:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_a_cifar_batch_that_would_run_code_is_refused_unrun(tmp_path):
    path, marker = tmp_path / "data_batch_1", tmp_path / "ran"
    path.write_bytes(pickle.dumps({b"data": RunsCode(marker), b"labels": []}, protocol=2))
    with pytest.raises(BadInputError, match=r"system is not allowed in a CIFAR batch\); extract cifar-10"):
        build_dataset(path, DataRoot(tmp_path / "data"), CONFIG, name="x")
    assert not marker.exists()


def test_a_folder_with_class_subfolders_records_labels_and_quarantines_copies(tmp_path):
    folder = tmp_path / "pets"
    for label in ("cats", "dogs"):
        (folder / label).mkdir(parents=True)
    for i in range(4):
        cv2.imwrite(str(folder / "cats" / f"c{i}.png"), picture(seed=i))
        cv2.imwrite(str(folder / "dogs" / f"d{i}.png"), picture(seed=10 + i))
    (folder / "dogs" / "d0_copy.png").write_bytes((folder / "dogs" / "d0.png").read_bytes())
    cv2.imwrite(str(folder / "cats" / "c1_reencoded.jpg"), picture(seed=1), [cv2.IMWRITE_JPEG_QUALITY, 90])
    cv2.imwrite(str(folder / "grey.png"), np.full((40, 40, 3), 128, np.uint8))
    (folder / "broken.png").write_bytes((folder / "cats" / "c2.png").read_bytes()[:100])
    root = DataRoot(tmp_path / "data")

    report = build_dataset(folder, root, CONFIG, name="pets")

    stored, index, meta = snapshot_of(root)
    assert stored.shape == (8, 40, 40, 3) and meta["holds"] == "pets" and meta["flip"] is True
    assert meta["labels"] == {"cats": 4, "dogs": 4}
    assert {r["crop_id"] for r in index} == {f"cats/c{i}.png" for i in range(4)} | {
        f"dogs/d{i}.png" for i in range(4)
    }
    reasons = {q["crop_id"]: q["reasons"] for q in meta["quarantined"]}
    assert reasons == {
        "cats/c1_reencoded.jpg": ["near_duplicate"],
        "dogs/d0_copy.png": ["duplicate"],
        "grey.png": ["flat"],
    }
    assert report.counts["unreadable"] == 1 and any(
        n.startswith(str(folder / "broken.png")) for n in report.notes
    )
    sheets = set(meta["sheets"])
    assert sheets == {
        "accepted.png",
        "rejected-flat.png",
        "rejected-duplicate.png",
        "rejected-near_duplicate.png",
    }
    assert "Labels: cats (4), dogs (4)." in (root.latest_dataset / "README.md").read_text()


def test_mixed_sizes_are_named_unless_size_resizes_them(tmp_path):
    folder = tmp_path / "mixed"
    folder.mkdir()
    for i in range(5):
        cv2.imwrite(str(folder / f"a{i}.png"), pixels(48, 48, seed=i))
    cv2.imwrite(str(folder / "wide.png"), pixels(64, 40, seed=9))
    root = DataRoot(tmp_path / "data")
    with pytest.raises(BadInputError, match=r"2 sizes: 48x48 \(5: .*\); 64x40 \(1: wide.png\); pass --size"):
        build_dataset(folder, root, CONFIG, name="mixed")
    assert not root.datasets_dir.exists() or not any(root.datasets_dir.iterdir())

    build_dataset(folder, root, CONFIG, name="mixed", size=32)
    assert snapshot_of(root)[0].shape == (6, 32, 32, 3)


def test_an_npy_array_becomes_a_snapshot(tmp_path):
    path = tmp_path / "sprites.npy"
    images = np.stack([pixels(32, 32, seed=i) for i in range(5)])
    np.save(path, images)
    build_dataset(path, DataRoot(tmp_path / "data"), CONFIG, name="sprites")
    stored, index, meta = snapshot_of(DataRoot(tmp_path / "data"))
    assert (
        np.array_equal(stored, images)
        and meta["holds"] == "sprites"
        and index[4]["crop_id"] == "sprites.npy:4"
    )


@pytest.mark.parametrize(
    ("array", "message"),
    [
        (np.zeros((4, 8, 8), np.float32), r"dtype float32, not uint8; convert it .*\.astype\(np.uint8\)"),
        (np.zeros((4, 784), np.uint8), r"shape \(4, 784\); expected \(N, H, W\) .* x.reshape\(-1, 28, 28\)"),
        (np.zeros((4, 3, 8, 8), np.uint8), r"channels-first; use x.transpose\(0, 2, 3, 1\)"),
        (np.zeros((4, 8, 8, 4), np.uint8), r"drop an alpha channel \(x\[\.\.\., :3\]\)"),
        (np.array([{"x": 1}] * 4, dtype=object), r"not a readable numpy file .* not Python objects"),
    ],
)
def test_arrays_of_the_wrong_kind_are_named_with_the_fix(tmp_path, array, message):
    path = tmp_path / "set.npy"
    np.save(path, array, allow_pickle=True)
    root = DataRoot(tmp_path / "data")
    with pytest.raises(BadInputError, match=message):
        build_dataset(path, root, CONFIG, name="bad")
    assert not root.latest_dataset.exists()


def test_bad_idx_files_are_named_with_the_fix(tmp_path):
    folder, images, labels = mnist_folder(tmp_path)
    whole = idx(images, 0x803)
    bad = tmp_path / "bad"
    bad.mkdir()
    cases = {
        "t1-images-idx3-ubyte": (
            whole[:-100],
            r"truncated: its header promises 12x28x28 bytes .* download it again",
        ),
        "t2-images-idx3-ubyte": (
            idx(labels, 0x801),
            r"is a labels file \(idx1\), not an images file \(idx3\)",
        ),
        "t3-images-idx3-ubyte": (
            b"\x00\x00\x08\x0d" + whole[4:],
            r"is magic number 0x0000080d, not an images",
        ),
        "t4-images-idx3-ubyte.gz": (gzip.compress(whole)[:-40], r"damaged or truncated gzip file"),
    }
    for name, (data, message) in cases.items():
        (bad / name).write_bytes(data)
        with pytest.raises(BadInputError, match=message):
            build_dataset(bad / name, DataRoot(tmp_path / "data"), CONFIG, name="bad")
    (folder / "train-labels-idx1-ubyte").write_bytes(idx(labels[:5], 0x801))
    with pytest.raises(BadInputError, match="5 labels for 12 images"):
        build_dataset(folder, DataRoot(tmp_path / "data"), CONFIG, name="bad")


def test_a_taken_down_image_stays_out_of_the_next_build(tmp_path):
    from validate.takedown import forget

    folder, images, _ = mnist_folder(tmp_path)
    root = DataRoot(tmp_path / "data")
    build_dataset(folder, root, CONFIG, name="digits")
    _, index, _ = snapshot_of(root)
    first = root.latest_dataset.resolve()

    forget(index[3]["sha256"], root, CONFIG)  # the sha256 column of index.csv, as the card says

    assert not first.exists()  # the snapshot that held it is gone
    build_dataset(folder, root, CONFIG, name="digits")
    stored, again, meta = snapshot_of(root)
    assert len(stored) == 11 and index[3]["sha256"] not in {r["sha256"] for r in again}
    assert [(q["crop_id"], q["reasons"]) for q in meta["quarantined"]] == [
        (index[3]["crop_id"], ["opted_out"])
    ]


KILLED_BUILD = """
import os, signal, sys
from common.layout import DataRoot
from validate.config import ValidateConfig
from validate.ready_made import build_dataset

def die_once_images_are_written(done, total, message):
    if message.startswith("wrote"):  # images.npy is in the temporary folder, nothing else is
        os.kill(os.getpid(), signal.SIGKILL)

build_dataset(sys.argv[1], DataRoot(sys.argv[2]), ValidateConfig(min_images=4), name="digits",
              on_progress=die_once_images_are_written)
"""


def test_a_build_killed_midway_leaves_no_half_snapshot_and_the_next_run_completes(tmp_path):
    folder, images, _ = mnist_folder(tmp_path)
    root = DataRoot(tmp_path / "data")
    child = subprocess.run(
        [sys.executable, "-c", KILLED_BUILD, str(folder), str(root.root)], cwd=REPO, timeout=120
    )
    assert child.returncode == -9
    left = [p.name for p in root.datasets_dir.iterdir()]
    assert len(left) == 1 and left[0].startswith(".tmp-")  # only the temporary folder, no snapshot
    assert not root.latest_dataset.exists()

    build_dataset(folder, root, CONFIG, name="digits")

    assert [p.name for p in root.datasets_dir.iterdir() if p.name.startswith(".")] == []
    stored, index, _ = snapshot_of(root)
    assert np.array_equal(stored[..., 0], images) and len(index) == 12


def test_training_and_export_on_digits_never_mirror_and_the_card_says_digits(tmp_path, one_thread):
    from export.stage import export
    from models.train import train
    from tests.export_data import small_export
    from tests.train_helpers import tiny

    folder, _, _ = mnist_folder(tmp_path, n=32)
    root = DataRoot(tmp_path / "data")
    build_dataset(folder, root, CONFIG, name="digits")

    train(tiny(model="mlp", channels=1, steps=4, device="cpu"), root)  # flip is on in the config

    run = json.loads((root.latest_run / "run.json").read_text())
    assert run["config"]["flip"] is False and run["config"]["channels"] == 1
    export(small_export(onnx=False), root)
    card = (root.exports_dir / root.latest_run.resolve().name / "MODEL_CARD.md").read_text()
    assert "generates 32x32 images of MNIST digits" in card
    assert "people" not in card.split("## Taking")[0]


def test_faces_dataset_prints_one_line_for_a_bad_file(tmp_path):
    path = tmp_path / "train-images-idx3-ubyte"
    path.write_bytes(idx(digits(4), 0x803)[:-10])
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "flows.cli",
            "dataset",
            str(path),
            "--name",
            "x",
            "--data-dir",
            str(tmp_path / "d"),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 1
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"faces: error: {path}: truncated")


def phone_folder(tmp_path: Path, photos_dir: Path, n: int) -> tuple[Path, list[np.ndarray]]:
    """Real portraits as a phone stores them: big, JPEG, some sideways with an EXIF orientation."""
    from PIL import Image

    folder, upright = tmp_path / "phone", []
    folder.mkdir()
    for i, path in enumerate(sorted(photos_dir.rglob("*.jpg"))[:n]):
        photo = Image.open(path).convert("RGB").resize((1800, 1800))
        upright.append(np.asarray(photo))
        if i % 2:  # stored turned a quarter, with the tag that turns it back (orientation 6)
            exif = Image.Exif()
            exif[0x0112] = 6
            photo.transpose(Image.Transpose.ROTATE_90).save(folder / f"p{i}.jpg", quality=92, exif=exif)
        else:
            photo.save(folder / f"p{i}.jpg", quality=92)
    return folder, upright


def test_a_folder_of_phone_photos_is_read_upright_and_one_photo_at_a_time(tmp_path, photos_dir):
    import tracemalloc

    folder, upright = phone_folder(tmp_path, photos_dir, n=8)
    root = DataRoot(tmp_path / "data")
    tracemalloc.start()
    build_dataset(folder, root, CONFIG, name="phone", size=32)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    stored, index, _ = snapshot_of(root)
    for row, image in zip(index, stored, strict=True):
        expected = cv2.resize(upright[int(row["crop_id"][1:-4])], (32, 32), interpolation=cv2.INTER_AREA)
        assert np.abs(image.astype(int) - expected).mean() < 4, row["crop_id"]  # JPEG's loss only
    one_photo = upright[0].nbytes  # 9.7 MB: holding all eight would take 78 MB, reading one takes ~3 copies
    assert peak < 5 * one_photo, f"peak {peak / 1e6:.0f} MB: the photos were held at full size"


def test_16_bit_and_transparent_images_in_a_folder_read_as_preprocess_reads_them(tmp_path):
    from PIL import Image

    folder = tmp_path / "scans"
    folder.mkdir()
    greys = digits(6, size=32)
    for i, grey in enumerate(greys):  # 16-bit greyscale, as scanners and microscopes write
        Image.fromarray(grey.astype(np.uint16) * 257).save(folder / f"scan{i}.png")
    rgba = np.zeros((32, 32, 4), np.uint8)
    rgba[8:24, 8:24] = (0, 0, 0, 255)  # a black square on a transparent background
    Image.fromarray(rgba).save(folder / "cutout.png")
    root = DataRoot(tmp_path / "data")

    build_dataset(folder, root, CONFIG, name="scans", channels=1)

    stored, index, _ = snapshot_of(root)
    by_name = dict(zip((r["crop_id"] for r in index), stored, strict=True))
    for i, grey in enumerate(greys):
        assert np.array_equal(by_name[f"scan{i}.png"][:, :, 0], grey)  # scaled down, not clipped to 255
    assert by_name["cutout.png"][0, 0, 0] == 255 and by_name["cutout.png"][16, 16, 0] == 0  # over white
