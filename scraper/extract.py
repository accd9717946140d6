"""HTML -> links to follow and image candidates, with alt text, captions, licences and opt-outs.

Image candidates come from `<img>` (src, srcset, lazy-loading attributes), `<picture><source>`,
`<a href>` links to full-size images and `og:image`; of a srcset the largest candidate is taken.
"""

import json
import re
from dataclasses import asdict, dataclass

from bs4 import BeautifulSoup, Tag

from scraper.html_tree import Tree
from scraper.robots import directive_words
from scraper.urls import looks_like_image, normalize

LAZY_SRC = ("data-src", "data-lazy-src", "data-original", "data-full-src", "data-lazy")
LAZY_SRCSET = ("data-srcset", "data-lazy-srcset")
REFRESH = re.compile(r"^\s*[\d.]*\s*[;,]?\s*(?:url\s*=\s*)?(.*)$", re.I | re.S)  # "0; url=/next"
PLACEHOLDER = re.compile(r"(placeholder|blank|spacer|transparent|pixel|lazy|loading|1x1)[^/]*$", re.I)
MIME_TYPES = {
    "image/jpeg": "jpeg",
    "image/jpg": "jpeg",
    "image/png": "png",
    "image/webp": "webp",
    "image/gif": "gif",
    "image/bmp": "bmp",
}
MAX_TEXT = 1000
MAX_SOURCES = 20  # <source>s read from one <picture> (a real one has a few)
DEFAULT_FOLLOW = "a[href]"


@dataclass(frozen=True)
class ImageCandidate:
    url: str
    alt: str | None = None
    caption: str | None = None
    licence: str | None = None

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class Page:
    links: list[str]
    images: list[ImageCandidate]
    robots: set[str]  # <meta name="robots"> directives for us, lower case
    licence: str | None


# ---------------------------------------------------------------- srcset (HTML standard)


def parse_srcset(value: str) -> list[tuple[str, float, str]]:
    """(url, size, unit) per candidate, unit 'w' or 'x', following the HTML standard's algorithm.

    URLs may contain commas; a candidate ends at whitespace, and a trailing comma ends a URL
    without descriptors. Candidates with invalid descriptors are dropped, as browsers do.
    """
    out, pos, n = [], 0, len(value)
    while pos < n:
        while pos < n and (value[pos].isspace() or value[pos] == ","):
            pos += 1
        if pos >= n:
            break
        start = pos
        while pos < n and not value[pos].isspace():
            pos += 1
        url = value[start:pos]
        descriptors: list[str] = []
        if url.endswith(","):
            url = url.rstrip(",")
        else:
            descriptors, pos = _descriptors(value, pos)
        parsed = _parse_descriptors(descriptors)
        if url and parsed:
            out.append((url, *parsed))
    return out


def _descriptors(value: str, pos: int) -> tuple[list[str], int]:
    """Tokenise descriptors up to the comma that ends the candidate (commas inside parens don't)."""
    tokens, current, in_parens = [], "", False
    while pos < len(value):
        c = value[pos]
        pos += 1
        if in_parens:
            current += c
            in_parens = c != ")"
        elif c.isspace():
            if current:
                tokens.append(current)
                current = ""
        elif c == ",":
            break
        else:
            current += c
            in_parens = c == "("
    if current:
        tokens.append(current)
    return tokens, pos


def _parse_descriptors(tokens: list[str]) -> tuple[float, str] | None:
    size, unit = 1.0, "x"
    seen = set()
    for token in tokens:
        kind, number = token[-1:].lower(), token[:-1]
        if kind not in ("w", "x", "h") or kind in seen:
            return None
        seen.add(kind)
        try:
            value = float(number) if kind == "x" else int(number)
        except ValueError:
            return None
        if value <= 0:
            return None
        if kind in ("w", "x"):
            size, unit = float(value), kind
    if {"w", "x"} <= seen:
        return None
    return size, unit


def largest(candidates: list[tuple[str, float, str]]) -> str | None:
    """The biggest candidate: widths beat densities (a `w` srcset describes the real files)."""
    if not candidates:
        return None
    widths = [c for c in candidates if c[2] == "w"]
    pool = widths or candidates
    return max(pool, key=lambda c: c[1])[0]


# ---------------------------------------------------------------- the page


def extract(
    html: str | bytes,
    page_url: str,
    *,
    follow: str = DEFAULT_FOLLOW,
    follow_pattern: str | None = None,
    image_scope: str | None = None,
    agent_token: str = "faces-pipeline",
    allowed_types: tuple[str, ...] = ("jpeg", "png", "webp", "gif", "bmp"),
) -> Page:
    """Links to follow, image candidates, robots directives and licence of one HTML page."""
    soup = BeautifulSoup(html, "html.parser")
    tree = Tree(soup, {"licence-link": _is_licence_link})
    urls = _PageUrls(soup, page_url, follow_pattern)
    scopes = _outermost(soup.select(image_scope), tree) if image_scope else [soup]
    licence = page_licence(soup, scopes, urls.absolute, tree)
    found = _Candidates(licence, json_ld_image_licences(soup, urls.absolute), urls.absolute, tree)
    for scope in scopes:
        _add_images(scope, soup, urls, found, allowed_types)
    return Page(
        links=_links(soup, follow, page_url, urls),
        images=list(found.by_url.values()),
        robots=meta_robots(soup, agent_token),
        licence=licence,
    )


class _PageUrls:
    """A page's URLs made absolute against its <base href>, and links told apart from images."""

    def __init__(self, soup: BeautifulSoup, page_url: str, follow_pattern: str | None) -> None:
        self.base = page_url
        base_tag = soup.find("base", href=True)
        if isinstance(base_tag, Tag):
            self.base = normalize(str(base_tag["href"]), page_url) or page_url
        self.pattern = re.compile(follow_pattern) if follow_pattern else None

    def absolute(self, value) -> str | None:
        return normalize(str(value), self.base) if value else None

    def is_page_link(self, url: str) -> bool:
        """A link `follow_pattern` names a page, even if it ends in .jpg."""
        return bool(self.pattern and self.pattern.search(url))

    def to_follow(self, url: str) -> bool:
        """With `follow_pattern`, the links it matches; without, every link but those to images."""
        return self.is_page_link(url) or (not self.pattern and not looks_like_image(url))

    def largest(self, candidates: list[tuple[str, float, str]]) -> str | None:
        """The largest candidate whose URL is a usable one (`http://[x/` is not), made absolute."""
        return self.absolute(largest([c for c in candidates if self.absolute(c[0])]))

    def full_size(self, a: Tag | None) -> str | None:
        """The href of a link to a full-size image, unless it is a page we follow."""
        url = self.absolute(a.get("href")) if a is not None else None
        return url if url and looks_like_image(url) and not self.is_page_link(url) else None


class _Candidates:
    """Image candidates by URL, each with its alt text, caption and licence; a URL found twice
    keeps the first non-empty value of each."""

    def __init__(
        self, page_licence: str | None, image_licences: dict[str, str], absolute, tree: Tree
    ) -> None:
        self.page_licence = page_licence
        self.image_licences = image_licences  # JSON-LD ImageObject licences by image URL
        self.absolute = absolute
        self.tree = tree
        self.by_url: dict[str, ImageCandidate] = {}

    def add(self, url: str | None, element: Tag | None, alt: str | None = None) -> None:
        if not url:
            return
        if alt is None and element is not None:
            alt = element.get("alt")
        figure = self.tree.ancestor(element, "figure") if element is not None else None
        licence = self.image_licences.get(url) or self._figure_licence(figure) or self.page_licence
        candidate = ImageCandidate(url=url, alt=_text(alt), caption=self._caption(figure), licence=licence)
        old = self.by_url.get(url)
        self.by_url[url] = _merge(old, candidate) if old else candidate

    def _figure_licence(self, figure: Tag | None) -> str | None:
        link = self.tree.first_inside(figure, "licence-link") if figure is not None else None
        return self.absolute(link["href"]) if link is not None else None

    def _caption(self, figure: Tag | None) -> str | None:
        caption = self.tree.first_inside(figure, "figcaption") if figure is not None else None
        return _text(self.tree.text(caption, MAX_TEXT)) if caption is not None else None


def _add_images(
    scope: Tag, soup: BeautifulSoup, urls: _PageUrls, found: _Candidates, allowed_types: tuple[str, ...]
) -> None:
    """<img> (or the full-size image its link points to), image links without an <img>, og:image."""
    tree = found.tree
    for img in scope.find_all("img"):
        url = urls.full_size(tree.ancestor(img, "a")) or urls.largest(_img_sources(img, tree, allowed_types))
        found.add(url, img)
    for a in scope.find_all("a", href=True):
        if tree.first_inside(a, "img") is None and (url := urls.full_size(a)):
            found.add(url, a, alt=a.get("title") or tree.text(a, MAX_TEXT) or None)
    alt_meta = soup.find("meta", property="og:image:alt")
    for meta in scope.find_all("meta", property=re.compile(r"^og:image(:url|:secure_url)?$")):
        found.add(urls.absolute(meta.get("content")), None, alt=alt_meta.get("content") if alt_meta else None)


def _links(soup: BeautifulSoup, follow: str, page_url: str, urls: _PageUrls) -> list[str]:
    """The links `follow` selects that lead to other pages, and a meta refresh's target (a redirect
    in the page), each once, in page order."""
    # The default selector without soupsieve, whose first use builds its patterns (0.1 s of CPU or more).
    anchors = soup.find_all("a", href=True) if follow == DEFAULT_FOLLOW else soup.select(follow)
    links = [urls.absolute(a.get("href")) for a in anchors]
    links += [urls.absolute(target) for target in meta_refresh(soup)]
    return list(dict.fromkeys(url for url in links if url and url != page_url and urls.to_follow(url)))


def meta_refresh(soup: BeautifulSoup) -> list[str]:
    """The URLs of `<meta http-equiv="refresh" content="0; url=…">` tags (the HTML standard's syntax)."""
    targets = []
    for meta in soup.find_all("meta", attrs={"http-equiv": re.compile(r"^\s*refresh\s*$", re.I)}):
        match = REFRESH.match(str(meta.get("content") or ""))
        target = match.group(1).strip() if match else ""
        if target[:1] in ("'", '"'):
            target = target[1:].split(target[0], 1)[0]
        if target:
            targets.append(target)
    return targets


def _img_sources(img: Tag, tree: Tree, allowed_types: tuple[str, ...]) -> list[tuple[str, float, str]]:
    """The sources of an <img>, looking at its <picture> sources and lazy-loading attributes."""
    candidates = []
    picture = tree.ancestor(img, "picture")
    if picture is not None:
        for source in tree.inside(picture, "source", MAX_SOURCES):
            mime = str(source.get("type") or "").lower()
            if mime and MIME_TYPES.get(mime) not in allowed_types:
                continue  # e.g. image/avif: a format we do not keep
            candidates += parse_srcset(str(source.get("srcset") or source.get("data-srcset") or ""))
    src = str(img.get("src") or "").strip()
    srcset = str(img.get("srcset") or "")
    if not src or src.startswith("data:") or PLACEHOLDER.search(src):
        src = next((str(img[a]) for a in LAZY_SRC if img.get(a)), "")
        srcset = srcset or next((str(img[a]) for a in LAZY_SRCSET if img.get(a)), "")
    candidates += [c for c in parse_srcset(srcset) if not c[0].startswith("data:")]
    if src and not src.startswith("data:"):
        candidates.append((src, 1.0, "x"))
    return candidates


def meta_robots(soup: BeautifulSoup, agent_token: str) -> set[str]:
    names = {"robots", agent_token.lower()}
    directives = set()
    for meta in soup.find_all("meta", attrs={"name": True, "content": True}):
        if str(meta["name"]).strip().lower() in names:
            directives |= set(directive_words(str(meta["content"])))  # `noai noimageai` too
    return directives


def page_licence(soup: BeautifulSoup, scopes: list, absolute, tree: Tree) -> str | None:
    """rel=license links (within the image scope: a site's own text licence is often one), then
    JSON-LD `license` of the page, then <meta name="license">."""
    for scope in scopes:
        for tag in scope.find_all(["a", "link"], rel=True, href=True):
            rels = tag["rel"] if isinstance(tag["rel"], list) else str(tag["rel"]).split()
            if "license" in [r.lower() for r in rels] and tree.ancestor(tag, "figure") is None:
                return absolute(tag["href"]) or str(tag["href"])
    for obj in _json_ld(soup):
        if obj.get("@type") != "ImageObject" and obj.get("license"):
            return _licence_value(obj["license"], absolute)
    meta = soup.find("meta", attrs={"name": re.compile(r"^(license|dc\.rights|dcterms\.license)$", re.I)})
    return _text(meta.get("content")) if meta else None


def json_ld_image_licences(soup: BeautifulSoup, absolute) -> dict[str, str]:
    out = {}
    for obj in _json_ld(soup):
        if obj.get("@type") == "ImageObject" and obj.get("license"):
            for key in ("contentUrl", "url"):
                url = absolute(obj.get(key)) if isinstance(obj.get(key), str) else None
                if url:
                    out[url] = _licence_value(obj["license"], absolute)
    return out


def _json_ld(soup: BeautifulSoup) -> list[dict]:
    """Every JSON object in the page's JSON-LD blocks, nested ones included, in document order; bad
    JSON, or JSON nested deeper than the json module parses (RecursionError), is skipped."""
    objects: list[dict] = []
    for script in soup.find_all("script", type="application/ld+json"):
        try:
            stack = [json.loads(script.string or "")]
        except (ValueError, TypeError, RecursionError):
            continue
        while stack:  # depth first without recursion: no nesting can overflow the stack
            node = stack.pop()
            if isinstance(node, dict):
                objects.append(node)
                stack.extend(reversed(list(node.values())))
            elif isinstance(node, list):
                stack.extend(reversed(node))
    return objects


def _licence_value(value, absolute) -> str | None:
    if isinstance(value, dict):
        value = value.get("@id") or value.get("url") or value.get("name")
    if isinstance(value, list):
        value = value[0] if value else None
    if not isinstance(value, str):
        return None
    return absolute(value) if value.startswith(("http", "/")) else _text(value)


def _is_licence_link(tag: Tag) -> bool:
    """What find(["a", "link"], rel="license", href=True) matches (a figure's licence)."""
    rel = tag.get("rel")
    rels = rel if isinstance(rel, list) else [rel]
    return tag.name in ("a", "link") and tag.get("href") is not None and "license" in rels


def _outermost(scopes: list[Tag], tree: Tree) -> list[Tag]:
    """The `image_scope` matches less those inside another (whose elements that one already has)."""
    kept: list[Tag] = []
    for scope in scopes:  # in document order
        if not kept or tree.pos[id(scope)] > tree.end[id(kept[-1])]:
            kept.append(scope)
    return kept


def _text(value) -> str | None:
    if not value:
        return None
    text = " ".join(str(value).split())
    return text[:MAX_TEXT] or None


def _merge(old: ImageCandidate, new: ImageCandidate) -> ImageCandidate:
    return ImageCandidate(
        url=old.url,
        alt=old.alt or new.alt,
        caption=old.caption or new.caption,
        licence=old.licence or new.licence,
    )
