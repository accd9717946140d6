"""Readers of ready-made image sets for `faces dataset`: a folder of images (class sub-folders become
labels), MNIST idx files, Keras-style `mnist.npz`, CIFAR-10/100 python batches, `.npy`/`.npz` arrays.

Each reader returns an `ImageSet`: the images as they are stored (grey (H, W) or RGB (H, W, 3) uint8),
a name, source URI, content hash and label per image, and what the set holds. A file that is not what
its format promises (a truncated idx file, a wrong magic number, floats instead of uint8) is a
BadInputError naming the file, the problem and the fix; a folder image that does not decode is
listed in `unreadable` and the rest are kept. CIFAR batches are pickles: they are read with an
unpickler that builds nothing but dicts, lists and numpy arrays, so a crafted file cannot run code.
"""

import gzip
import io
import pickle
import re
import struct
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
from PIL import Image, ImageOps

from common.files import sha256_bytes
from common.report import BadInputError
from preprocess.decode import to_rgb

FOLDER_SUFFIXES = frozenset(
    {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".pgm", ".ppm"}
)
GREY_MODES = frozenset({"1", "L", "LA", "La", "I", "I;16", "I;16B", "I;16L", "I;16N", "F"})
IDX_IMAGES, IDX_LABELS = 0x00000803, 0x00000801  # idx magic: unsigned bytes, 3 or 1 dimensions
IDX_NAME = re.compile(r"images[.-]idx3-ubyte(\.gz)?$")
CIFAR_NAME = re.compile(r"^(data_batch_\d+|test_batch|train|test)$")
DIGITS = "MNIST digits"


@dataclass
class ImageSet:
    holds: str  # what the images show, for the dataset and model cards ("MNIST digits", a folder name)
    format: str
    mirror_ok: bool  # False where a mirrored image is a different thing (digits): training does not flip
    images: list[np.ndarray] = field(default_factory=list)
    names: list[str] = field(default_factory=list)  # unique within the set: file path or `file:row`
    sources: list[str] = field(default_factory=list)  # file URI, with `#row` inside an array file
    hashes: list[str] = field(default_factory=list)  # sha256 of an image file, or of an array row's pixels
    labels: list[str] = field(default_factory=list)  # "" where the set has none
    unreadable: list[tuple[str, str]] = field(default_factory=list)  # (file, reason)

    def add_array(self, path: Path, images: np.ndarray, labels: list[str] | None, prefix: str = "") -> None:
        base = path.resolve().as_uri()
        for i, image in enumerate(images):
            self.images.append(image)
            self.names.append(f"{prefix or path.name}:{i}")
            self.sources.append(f"{base}#{prefix}{'/' if prefix else ''}{i}")
            self.hashes.append(sha256_bytes(np.ascontiguousarray(image).tobytes()))
            self.labels.append(labels[i] if labels else "")


def read_image_set(path: Path, size: int | None = None) -> ImageSet:
    """The images at `path`, whichever of the supported formats it is in; a folder's photos are cut to
    `size` as they are read (the other formats hold small images already)."""
    if path.is_dir():
        if idx_files := _idx_files(path):
            return read_idx(idx_files)
        if cifar := sorted(p for p in path.iterdir() if p.is_file() and CIFAR_NAME.match(p.name)):
            return read_cifar(cifar)
        return read_folder(path, size)
    if re.search(r"idx\d-ubyte(\.gz)?$", path.name):  # an idx file; its magic number says which kind
        return read_idx([path])
    if path.suffix in (".npy", ".npz"):
        return read_arrays(path)
    if CIFAR_NAME.match(path.name):
        return read_cifar([path])
    raise BadInputError(
        f"{path}: not a format `faces dataset` reads; give a folder of images, MNIST idx files "
        "(*-images-idx3-ubyte[.gz]), mnist.npz, CIFAR-10 python batches (data_batch_1 ...) or a .npy/.npz "
        "array of shape (N, H, W) or (N, H, W, C)"
    )


# --- a folder of images ---------------------------------------------------------------------------------


def read_folder(folder: Path, size: int | None = None) -> ImageSet:
    """Every image file below `folder`, upright; the first sub-folder of a file's path is its label.
    With `size`, each image is centre-cropped and resized as it is read, so a folder of phone photos
    never sits in memory at full resolution."""
    found = ImageSet(holds=folder.resolve().name, format="folder", mirror_ok=True)
    files = sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in FOLDER_SUFFIXES)
    for path in files:
        relative = path.relative_to(folder)
        if any(part.startswith(".") for part in relative.parts):
            continue
        data = path.read_bytes()
        try:
            image = _decode(data)
        except Exception as e:  # PIL raises many kinds for truncated or corrupt files
            found.unreadable.append((str(path), f"does not decode ({e})"))
            continue
        found.images.append(image if size is None else square(image, size))
        found.names.append(relative.as_posix())
        found.sources.append(path.resolve().as_uri())
        found.hashes.append(sha256_bytes(data))
        found.labels.append(relative.parts[0] if len(relative.parts) > 1 else "")
    return found


def _decode(data: bytes) -> np.ndarray:
    """Grey (H, W) or RGB (H, W, 3) uint8, turned upright by its EXIF orientation, 16-bit scaled down,
    transparency over white: as preprocess decodes a photo."""
    with Image.open(io.BytesIO(data)) as im:
        im.load()
        rgb = to_rgb(ImageOps.exif_transpose(im))
        return np.ascontiguousarray(rgb[:, :, 0]) if im.mode in GREY_MODES else rgb


def square(image: np.ndarray, size: int) -> np.ndarray:
    """The centre square of an image, resized to size x size (unchanged when it already is)."""
    h, w = image.shape[:2]
    if (h, w) == (size, size):
        return image
    side = min(h, w)
    top, left = (h - side) // 2, (w - side) // 2
    crop = np.ascontiguousarray(image[top : top + side, left : left + side])
    interpolation = cv2.INTER_AREA if side > size else cv2.INTER_LINEAR
    return cv2.resize(crop, (size, size), interpolation=interpolation)


# --- MNIST idx ------------------------------------------------------------------------------------------


def _unzipped(path: Path) -> bytes:
    data = path.read_bytes()
    if data[:2] != b"\x1f\x8b":
        return data
    try:
        return gzip.decompress(data)
    except (EOFError, OSError) as e:
        raise BadInputError(f"{path}: a damaged or truncated gzip file ({e}); download it again") from None


def _idx(path: Path, magic: int, dims: int) -> np.ndarray:
    """An idx file's array, after checking its magic number and that it holds what its header says."""
    data = _unzipped(path)
    header = 4 + 4 * dims
    found = struct.unpack(">I", data[:4])[0] if len(data) >= 4 else None
    if found != magic:
        kinds = {IDX_IMAGES: "an images file (idx3)", IDX_LABELS: "a labels file (idx1)"}
        what = kinds.get(found, f"magic number 0x{found:08x}" if found is not None else "empty")
        raise BadInputError(
            f"{path}: is {what}, not {kinds[magic]} (magic number 0x{magic:08x}); give the MNIST "
            "*-images-idx3-ubyte file, gzipped or not, as downloaded"
        )
    shape = struct.unpack(f">{dims}I", data[4:header]) if len(data) >= header else (0,)
    need = header + int(np.prod(shape))
    if len(data) < need or len(shape) < dims:
        raise BadInputError(
            f"{path}: truncated: its header promises {'x'.join(map(str, shape))} bytes of data ({need} bytes "
            f"in all) but the file holds {len(data)}; download it again"
        )
    return np.frombuffer(data, np.uint8, need - header, header).reshape(shape)


def read_idx(paths: list[Path]) -> ImageSet:
    """MNIST-style idx3 image files, each with its idx1 labels file beside it when there is one."""
    found = ImageSet(holds=DIGITS, format="mnist-idx", mirror_ok=False)
    for path in paths:
        images = _idx(path, IDX_IMAGES, 3)
        labels = None
        for candidate in _label_files(path):
            if candidate.is_file():
                values = _idx(candidate, IDX_LABELS, 1)
                if len(values) != len(images):
                    raise BadInputError(
                        f"{candidate}: {len(values)} labels for {len(images)} images in {path.name}; "
                        "give the labels file of the same split, or remove it to import without labels"
                    )
                labels = [str(v) for v in values]
                break
        found.add_array(path, images, labels)
    return found


def _idx_files(folder: Path) -> list[Path]:
    """The idx image files in a folder, training set first; a gzipped copy beside its unzipped file is
    the same set."""
    files = {p.name: p for p in folder.glob("*idx3-ubyte*") if IDX_NAME.search(p.name)}
    chosen = [p for name, p in files.items() if name.removesuffix(".gz") == name or name[:-3] not in files]
    return sorted(chosen, key=lambda p: ("t10k" in p.name, p.name))


def _label_files(images: Path) -> list[Path]:
    name = images.name.replace("images-idx3", "labels-idx1").replace("images.idx3", "labels.idx1")
    bare = name.removesuffix(".gz")
    return [images.with_name(bare), images.with_name(bare + ".gz")]


# --- arrays: .npy, .npz (Keras mnist.npz) ---------------------------------------------------------------


def read_arrays(path: Path) -> ImageSet:
    """A .npy array, or the image arrays of a .npz (`x_train`, `x_test`, ... with `y_*` labels; or
    `images` with `labels`; or its only array)."""
    arrays = _load(path)
    keys = sorted(k for k in arrays if k.startswith("x_")) or [k for k in ("images", "x") if k in arrays]
    if not keys and len(arrays) == 1:
        keys = list(arrays)
    if not keys:
        raise BadInputError(
            f"{path}: holds arrays {sorted(arrays)}; name the images `images` (and their labels `labels`), "
            "or `x_train`/`x_test` as Keras does"
        )
    digits = "mnist" in path.name.lower() and "fashion" not in path.name.lower()
    found = ImageSet(holds=DIGITS if digits else path.stem, format="array", mirror_ok=not digits)
    for key in sorted(keys, key=lambda k: (k != "x_train", k)):
        images = check_images(arrays[key], f"{path} [{key}]" if path.suffix == ".npz" else str(path))
        label_key = "labels" if key == "images" else "y" + key[1:]
        labels = _labels(arrays.get(label_key), len(images), f"{path} [{label_key}]")
        found.add_array(path, images, labels, prefix=key if path.suffix == ".npz" else "")
    return found


def _load(path: Path) -> dict[str, np.ndarray]:
    try:
        loaded = np.load(path, allow_pickle=False)
        return {k: loaded[k] for k in loaded.files} if path.suffix == ".npz" else {"images": loaded}
    except ValueError as e:
        fix = (
            "save plain uint8 arrays (np.save), not Python objects" if "pickle" in str(e) else "save it again"
        )
        raise BadInputError(f"{path}: not a readable numpy file ({e}); {fix}") from None
    except (OSError, EOFError) as e:
        raise BadInputError(f"{path}: not a readable numpy file ({e}); save it again with np.save") from None


def check_images(images: np.ndarray, where: str) -> np.ndarray:
    """(N, H, W) or (N, H, W, C) uint8 with C of 1 or 3; any other array is named with the fix."""
    if images.dtype != np.uint8:
        raise BadInputError(
            f"{where}: dtype {images.dtype}, not uint8; convert it to 0-255 bytes first, e.g. "
            "(x * 255).round().astype(np.uint8) for floats in [0, 1]"
        )
    if images.ndim == 4 and images.shape[1] in (1, 3) and images.shape[3] not in (1, 3):
        raise BadInputError(f"{where}: shape {images.shape} is channels-first; use x.transpose(0, 2, 3, 1)")
    if images.ndim not in (3, 4) or (images.ndim == 4 and images.shape[3] not in (1, 3)):
        raise BadInputError(
            f"{where}: shape {images.shape}; expected (N, H, W) or (N, H, W, C) with C = 1 or 3: reshape "
            "flat rows (e.g. x.reshape(-1, 28, 28)) or drop an alpha channel (x[..., :3])"
        )
    return images[..., 0] if images.ndim == 4 and images.shape[3] == 1 else images


def _labels(values, n: int, where: str) -> list[str] | None:
    if values is None:
        return None
    values = np.asarray(values).reshape(-1)
    if len(values) != n:
        raise BadInputError(f"{where}: {len(values)} labels for {n} images; give one label per image")
    return [str(v) for v in values]


# --- CIFAR python batches -------------------------------------------------------------------------------


class _ArraysOnly(pickle.Unpickler):
    """Builds dicts, lists, strings, numbers and numpy arrays; refuses every other class."""

    ALLOWED = frozenset(
        {
            ("numpy.core.multiarray", "_reconstruct"),
            ("numpy._core.multiarray", "_reconstruct"),
            ("numpy", "ndarray"),
            ("numpy", "dtype"),
            ("_codecs", "encode"),  # how protocol 2 writes bytes
        }
    )

    def find_class(self, module: str, name: str):
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"{module}.{name} is not allowed in a CIFAR batch")
        return super().find_class(module, name)


def _unpickle(path: Path) -> dict:
    try:
        with open(path, "rb") as f:
            batch = _ArraysOnly(f, encoding="bytes").load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError) as e:
        raise BadInputError(
            f"{path}: not a readable CIFAR python batch ({e}); extract cifar-10-python.tar.gz again"
        ) from None
    if not isinstance(batch, dict):
        raise BadInputError(f"{path}: holds a {type(batch).__name__}, not a CIFAR batch (a dict)")
    return {k.decode() if isinstance(k, bytes) else k: v for k, v in batch.items()}


def read_cifar(paths: list[Path]) -> ImageSet:
    """CIFAR-10 (or CIFAR-100) python batches: `data` (N, 3072) rows of R, G, B planes, `labels`
    (`fine_labels`), named by batches.meta (meta) beside them."""
    found = ImageSet(holds="CIFAR-10 images", format="cifar", mirror_ok=True)
    for path in paths:
        batch = _unpickle(path)
        data = np.asarray(batch.get("data", []))
        if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
            raise BadInputError(
                f"{path}: `data` is {data.dtype} {data.shape}, not uint8 (N, 3072); give an unmodified "
                "batch from cifar-10-python.tar.gz"
            )
        if "fine_labels" in batch:
            found.holds = "CIFAR-100 images"
        values = batch.get("labels", batch.get("fine_labels"))
        names = _label_names(path.parent, "fine_label_names" if "fine_labels" in batch else "label_names")
        labels = _labels(values, len(data), f"{path} [labels]")
        if labels and names:
            labels = [names[int(v)] if int(v) < len(names) else v for v in labels]
        found.add_array(path, data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1), labels)
    return found


def _label_names(folder: Path, key: str) -> list[str]:
    for meta in (folder / "batches.meta", folder / "meta"):
        if meta.is_file():
            names = _unpickle(meta).get(key, [])
            return [n.decode() if isinstance(n, bytes) else str(n) for n in names]
    return []
