"""Pictures for Prefect markdown artifacts: small inline thumbnails instead of links the UI cannot follow.

A markdown file on disk links its pictures by relative path (`![samples](grid.png)`); in the Prefect
UI such a link resolves to nothing. Each picture becomes a downscaled JPEG data: URI (tens of KB, not
the megabyte of a full-size PNG in the server's database), and any other relative link becomes its
absolute path on disk, so the reader knows where to look.
"""

import base64
import io
import re
from pathlib import Path

from PIL import Image

# Longest side of a thumbnail, and the most base64 text one may add to an artifact.
MAX_SIDE = 512
MAX_URI_CHARS = 60_000
PICTURE_SUFFIXES = {".png", ".jpg", ".jpeg", ".gif", ".webp", ".bmp"}

# [text](target) or ![alt](target)
LINK = re.compile(r"!?\[([^\]]*)\]\(([^)\s]+)\)")
KEEP = re.compile(r"^(?:[a-z][a-z0-9+.-]*:|#)", re.IGNORECASE)  # URLs, data: URIs and anchors


def thumbnail_uri(path: Path, max_side: int = MAX_SIDE) -> str:
    """The picture at `path`, downscaled, as a JPEG data: URI under MAX_URI_CHARS."""
    with Image.open(path) as image:
        picture = image.convert("RGBA")
    flat = Image.new("RGB", picture.size, "white")  # transparent areas turn white, not black
    flat.paste(picture, mask=picture.getchannel("A"))
    side, quality = max_side, 85
    while True:
        small = flat.copy()
        small.thumbnail((side, side))
        buffer = io.BytesIO()
        small.save(buffer, "JPEG", quality=quality, optimize=True)
        uri = "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode()
        if len(uri) <= MAX_URI_CHARS or side <= 64:
            return uri
        side, quality = side * 3 // 4, max(quality - 10, 50)


def inline_pictures(markdown: str, folder: Path) -> str:
    """`markdown` (a file in `folder`) with its relative pictures inlined as thumbnails.

    A plain link to a picture (a contact sheet) is shown as one too; a link to anything else, or to
    a file that is missing, becomes its absolute path.
    """

    def replace(match: re.Match) -> str:
        text, target = match.groups()
        if KEEP.match(target):
            return match.group(0)
        path = (folder / target).resolve()
        if path.suffix.lower() in PICTURE_SUFFIXES and path.is_file():
            return f"![{text}]({thumbnail_uri(path)})"
        return f"{text} (`{path}`)"

    return LINK.sub(replace, markdown)
