"""Turn any image file the scraper may have stored into a BGR uint8 array, or a clear reason why not.

Pillow does the decoding because it tells truncated files apart (OpenCV returns the decoded part
silently), exposes the size before decoding (so a decompression bomb is refused unread) and handles
EXIF orientation, CMYK, palettes, alpha, 16-bit and animated GIFs explicitly.

`open_image` reads only the header (Pillow); `EncodedImage.decode(reduce)` then decodes at 1/1, 1/2,
1/4 or 1/8 of the size. A JPEG that ends with its end-of-image marker (so is not truncated) goes to
OpenCV's decoder, IMREAD_REDUCED_* for a reduced one (libjpeg's DCT scaling: a 64-megapixel photo at
1/8 costs a few MB and a tenth of the time), which is twice as fast as Pillow's and writes BGR
directly; any other file, and a JPEG OpenCV cannot decode, goes to Pillow (`draft` for a reduced
JPEG; other formats are decoded whole and then shrunk).
"""

import io
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import cv2
import numpy as np
from PIL import ExifTags, Image, ImageOps, UnidentifiedImageError

DEFAULT_MAX_PIXELS = 64_000_000
BACKGROUND = (255, 255, 255)  # what transparent pixels become


class ImageDecodeError(Exception):
    """The file cannot become an image; `reason` is a short phrase the preprocess manifest records."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


REDUCTIONS = (1, 2, 4, 8)  # what libjpeg's DCT scaling offers
OPENCV_REDUCED = {  # each applies EXIF orientation and gives BGR
    1: cv2.IMREAD_COLOR,
    2: cv2.IMREAD_REDUCED_COLOR_2,
    4: cv2.IMREAD_REDUCED_COLOR_4,
    8: cv2.IMREAD_REDUCED_COLOR_8,
}
JPEG_END = b"\xff\xd9"  # the end-of-image marker: a truncated JPEG lacks it
TURNED = {5, 6, 7, 8}  # EXIF orientations that swap width and height
# Modes Image.reduce can average (a palette index or a 1-bit pixel cannot be averaged).
AVERAGEABLE = {"L", "LA", "La", "RGB", "RGBA", "RGBa", "CMYK", "YCbCr", "I", "F"}


class EncodedImage:
    """An image file's bytes with its upright size (from the header), decodable at a reduced scale."""

    def __init__(self, data: bytes, width: int, height: int, is_jpeg: bool, max_pixels: int) -> None:
        self.data, self.width, self.height, self.is_jpeg = data, width, height, is_jpeg
        self.max_pixels = max_pixels

    def decode(self, reduce: int = 1) -> np.ndarray:
        """Upright BGR uint8 (H, W, 3) at 1/`reduce` of the size (each side rounded up); raises
        ImageDecodeError. Pixel centres map as x_full + 0.5 = (x + 0.5) * reduce."""
        if reduce not in REDUCTIONS:
            raise ValueError(f"reduce must be one of {REDUCTIONS}, not {reduce}")
        if self.is_jpeg and self.data.rstrip(b"\0").endswith(JPEG_END):
            bgr = cv2.imdecode(np.frombuffer(self.data, np.uint8), OPENCV_REDUCED[reduce])
            if bgr is not None and bgr.shape[:2] == (-(-self.height // reduce), -(-self.width // reduce)):
                return bgr
        with _reasons(), Image.open(io.BytesIO(self.data)) as im:
            _check_size(im, self.max_pixels)
            im.seek(0)  # the first frame of an animated GIF, WebP or APNG
            if reduce > 1 and self.is_jpeg:
                im.draft(None, (im.width // reduce, im.height // reduce))
            im.load()
            rgb = self._shrunk(ImageOps.exif_transpose(im), reduce)
        return cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR, dst=rgb)  # in place: no second copy of a big photo

    def _shrunk(self, upright: Image.Image, reduce: int) -> np.ndarray:
        """RGB at 1/reduce of the size, for an image decoded whole (not a JPEG)."""
        size = (-(-self.width // reduce), -(-self.height // reduce))
        if upright.size == size:
            return to_rgb(upright)
        if upright.mode in AVERAGEABLE:  # shrink before converting: the smaller copy is converted
            return to_rgb(upright.reduce(reduce))
        return cv2.resize(to_rgb(upright), size, interpolation=cv2.INTER_AREA)


def open_image(source: str | Path | bytes, *, max_pixels: int = DEFAULT_MAX_PIXELS) -> EncodedImage:
    """Read a file (path or bytes) and its header: size, orientation, format. Raises ImageDecodeError
    for an empty file, one Pillow cannot identify, and one over `max_pixels` (before decoding)."""
    data = _read(source)
    if not data:
        raise ImageDecodeError("empty file (0 bytes)")
    with _reasons(), Image.open(io.BytesIO(data)) as im:
        _check_size(im, max_pixels)
        width, height = im.size
        if im.getexif().get(ExifTags.Base.Orientation) in TURNED:
            width, height = height, width
        return EncodedImage(data, width, height, im.format in ("JPEG", "MPO"), max_pixels)


def load_image(source: str | Path | bytes, *, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Decode a file (path or bytes) to an upright BGR uint8 array (H, W, 3); raise ImageDecodeError."""
    return open_image(source, max_pixels=max_pixels).decode()


@contextmanager
def _reasons() -> Iterator[None]:
    """Pillow's errors as ImageDecodeError with a short reason."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            yield
    except ImageDecodeError:
        raise
    except UnidentifiedImageError:
        raise ImageDecodeError("not an image format Pillow can read (corrupt or unsupported)") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise ImageDecodeError(f"decompression bomb: {e}") from None
    except (OSError, SyntaxError, ValueError, EOFError) as e:  # what Pillow's decoders raise on bad data
        reason = "truncated file" if "truncated" in str(e) else "corrupt image data"
        raise ImageDecodeError(f"{reason}: {e}") from None


def _read(source: str | Path | bytes) -> bytes:
    if isinstance(source, bytes | bytearray | memoryview):
        return bytes(source)
    try:
        return Path(source).read_bytes()
    except FileNotFoundError:
        raise ImageDecodeError(f"missing file {source}") from None


def _check_size(im: Image.Image, max_pixels: int) -> None:
    w, h = im.size
    if w < 1 or h < 1:
        raise ImageDecodeError(f"image has no pixels ({w}x{h})")
    if w * h > max_pixels:
        raise ImageDecodeError(
            f"decompression bomb: {w}x{h} = {w * h / 1e6:.0f} Mpx exceeds "
            f"max_pixels = {max_pixels / 1e6:.0f} Mpx"
        )


def to_rgb(im: Image.Image) -> np.ndarray:
    """Any Pillow mode to RGB uint8: scale 16-bit down, composite alpha over white."""
    if im.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):  # 16- or 32-bit greyscale
        a = np.asarray(im, dtype=np.float64)
        peak = 65535.0 if a.max(initial=0) > 255 or im.mode.startswith("I;16") else 255.0
        grey = np.clip(a * (255.0 / peak) + 0.5, 0, 255).astype(np.uint8)
        return np.repeat(grey[:, :, None], 3, axis=2)
    if im.mode == "F":
        grey = np.clip(np.asarray(im, dtype=np.float64), 0, 255).astype(np.uint8)
        return np.repeat(grey[:, :, None], 3, axis=2)
    if im.mode in ("P", "PA") and "transparency" in im.info or im.mode in ("PA", "LA", "La"):
        im = im.convert("RGBA")
    if im.mode in ("RGBA", "RGBa"):
        background = Image.new("RGB", im.size, BACKGROUND)
        background.paste(im, mask=im.getchannel("A"))
        im = background
    return np.array(im if im.mode == "RGB" else im.convert("RGB"), dtype=np.uint8)
