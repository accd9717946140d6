"""What a downloaded file really is: type from magic bytes, size from the header, then a full decode.

The Content-Type header is never trusted: a server may send HTML, SVG (scriptable) or garbage as
`image/jpeg`. Dimensions are read from the header first, so a decompression bomb (a small file that
declares a huge canvas) is refused before a single pixel is decoded.
"""

import io
import re
import warnings
from dataclasses import dataclass

from PIL import Image, UnidentifiedImageError

EXTENSIONS = {"jpeg": "jpg", "png": "png", "webp": "webp", "gif": "gif", "bmp": "bmp"}
# MPO: a JPEG that carries a second image after the first (phones' HDR gain maps and depth maps).
PIL_FORMATS = {"JPEG": "jpeg", "MPO": "jpeg", "PNG": "png", "WEBP": "webp", "GIF": "gif", "BMP": "bmp"}
SNIFF_BYTES = 64
_REPR = re.compile(r"<[^<>]* at 0x[0-9a-fA-F]+>")  # e.g. <_io.BytesIO object at 0x7fb3e…>


class NotAnImage(Exception):
    """The bytes are not an image we keep; the message says what they are instead."""


@dataclass(frozen=True)
class ImageInfo:
    type: str
    width: int
    height: int


def sniff_type(head: bytes) -> str | None:
    """jpeg, png, webp, gif or bmp from the first bytes, else None."""
    if head.startswith(b"\xff\xd8\xff"):
        return "jpeg"
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "png"
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "webp"
    if head[:6] in (b"GIF87a", b"GIF89a"):
        return "gif"
    if head[:2] == b"BM" and len(head) >= 26:
        return "bmp"
    return None


def describe(head: bytes) -> str:
    """A human name for bytes that are not an image, for the manifest's error column."""
    text = head.lstrip(b"\xef\xbb\xbf \t\r\n").lower()
    if b"<svg" in text or (text.startswith(b"<?xml") and b"svg" in text):
        return "SVG"
    if text.startswith((b"<!doctype html", b"<html", b"<head", b"<body", b"<")):
        return "HTML"
    if not head:
        return "an empty body"
    return "unknown bytes " + head[:8].hex()


def inspect_image(data: bytes, max_pixels: int) -> ImageInfo:
    """Type and size of an image after a full decode; raises NotAnImage with the reason otherwise."""
    kind = sniff_type(data[:SNIFF_BYTES])
    if kind is None:
        raise NotAnImage(f"not an image: {describe(data[:SNIFF_BYTES])}")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as im:
                width, height = im.size
                if width * height > max_pixels:
                    raise NotAnImage(
                        f"decompression bomb: {width}x{height} = {width * height} pixels > max_pixels "
                        f"{max_pixels}; refused before decoding"
                    )
                if PIL_FORMATS.get(im.format or "") != kind:
                    raise NotAnImage(f"{kind} magic bytes but decodes as {im.format}")
                im.load()
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise NotAnImage(f"decompression bomb: {e}") from None
    except NotAnImage:
        raise
    except Exception as e:  # PIL raises many types for truncated or corrupt files
        raise NotAnImage(f"corrupt {kind}: {_what_is_wrong(e, kind, len(data))}") from None
    return ImageInfo(kind, width, height)


def _what_is_wrong(error: Exception, kind: str, size: int) -> str:
    """PIL's complaint in words about the file (its messages may hold Python object reprs)."""
    if isinstance(error, UnidentifiedImageError):
        return f"starts like a {kind} file but its header cannot be read ({size} bytes)"
    text = _REPR.sub("the data", str(error)).strip()
    if "truncated" in text.lower():
        return f"the file is truncated: it ends before the image data does ({size} bytes)"
    return text or type(error).__name__
