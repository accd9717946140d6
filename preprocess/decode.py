"""Turn any image file the scraper may have stored into a BGR uint8 array, or a clear reason why not.

Pillow does the decoding because it tells truncated files apart (OpenCV returns the decoded part
silently), exposes the size before decoding (so a decompression bomb is refused unread) and handles
EXIF orientation, CMYK, palettes, alpha, 16-bit and animated GIFs explicitly.
"""

import io
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

DEFAULT_MAX_PIXELS = 64_000_000
BACKGROUND = (255, 255, 255)  # what transparent pixels become


class ImageDecodeError(Exception):
    """The file cannot become an image; `reason` is a short phrase the preprocess manifest records."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def load_image(source: str | Path | bytes, *, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Decode a file (path or bytes) to an upright BGR uint8 array (H, W, 3); raise ImageDecodeError."""
    data = _read(source)
    if not data:
        raise ImageDecodeError("empty file (0 bytes)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as im:
                _check_size(im, max_pixels)
                im.seek(0)  # the first frame of an animated GIF, WebP or APNG
                im.load()
                rgb = _to_rgb(ImageOps.exif_transpose(im))
    except ImageDecodeError:
        raise
    except UnidentifiedImageError:
        raise ImageDecodeError("not an image format Pillow can read (corrupt or unsupported)") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise ImageDecodeError(f"decompression bomb: {e}") from None
    except (OSError, SyntaxError, ValueError, EOFError) as e:  # what Pillow's decoders raise on bad data
        reason = "truncated file" if "truncated" in str(e) else "corrupt image data"
        raise ImageDecodeError(f"{reason}: {e}") from None
    return np.ascontiguousarray(rgb[:, :, ::-1])


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


def _to_rgb(im: Image.Image) -> np.ndarray:
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
    return np.asarray(im.convert("RGB"), dtype=np.uint8)
