"""A parsed page's elements by document position, so extraction asks each element's questions in
O(log n) or a bounded number of steps: the nearest `<a>`, `<picture>` or `<figure>` around it, whether
an `<a>` holds an `<img>`, the first `<figcaption>` of a `<figure>`, an element's text.

bs4's find_parent, find and get_text walk all ancestors or the whole subtree on every call; on nested
unclosed tags (`<a href><a href>…`, each element inside the one before) one page took time
quadratic in its size (164 KiB: 50 s of CPU, far past any timeout).
"""

from bisect import bisect_right
from collections import defaultdict
from collections.abc import Callable

from bs4 import BeautifulSoup, NavigableString, Tag

ANCESTORS = ("a", "picture", "figure")  # the enclosing elements extraction asks for
MAX_TEXT_NODES = 200  # strings and tags read for one element's text: plenty for a caption or a link


class Tree:
    """Positions (in document order) of a page's tags; `marks` name extra sets of tags to find."""

    def __init__(self, soup: BeautifulSoup, marks: dict[str, Callable[[Tag], bool]]) -> None:
        self.nodes = list(soup.descendants)  # every tag and string, in document order
        self.pos: dict[int, int] = {}
        self.end: dict[int, int] = {}  # position of a tag's last descendant
        self.around: dict[int, tuple] = {id(soup): (None,) * len(ANCESTORS)}
        self.where: dict[str, list[int]] = defaultdict(list)  # tag name or mark -> positions
        for i, node in enumerate(self.nodes):
            if not isinstance(node, Tag):
                continue
            self.pos[id(node)] = self.end[id(node)] = i
            self.where[node.name].append(i)
            for mark, matches in marks.items():
                if matches(node):
                    self.where[mark].append(i)
            parent = node.parent
            around = self.around[id(parent)]
            if parent.name in ANCESTORS:  # a parent is its children's nearest one of its name
                around = tuple(
                    parent if name == parent.name else t for name, t in zip(ANCESTORS, around, strict=True)
                )
            self.around[id(node)] = around
        for i in range(len(self.nodes) - 1, -1, -1):  # descendants before their ancestors
            parent = self.nodes[i].parent
            last = self.end.get(id(self.nodes[i]), i)
            if id(parent) in self.end and self.end[id(parent)] < last:
                self.end[id(parent)] = last

    def ancestor(self, tag: Tag, name: str) -> Tag | None:
        """The nearest enclosing element called `name` (one of ANCESTORS), as find_parent(name)."""
        return self.around[id(tag)][ANCESTORS.index(name)]

    def inside(self, tag: Tag, key: str, limit: int) -> list[Tag]:
        """The first `limit` descendants of `tag` with this name or mark, in document order."""
        positions = self.where.get(key, [])
        start, end = bisect_right(positions, self.pos[id(tag)]), self.end[id(tag)]
        found = []
        for p in positions[start : start + limit]:
            if p > end:
                break
            found.append(self.nodes[p])
        return found

    def first_inside(self, tag: Tag, key: str) -> Tag | None:
        found = self.inside(tag, key, 1)
        return found[0] if found else None

    def text(self, tag: Tag, max_chars: int) -> str:
        """get_text(" ", strip=True), enough of it for `max_chars` once whitespace is collapsed, from
        at most MAX_TEXT_NODES descendants."""
        types = tag.interesting_string_types
        types = tag.MAIN_CONTENT_STRING_TYPES if types is None else types
        start = self.pos[id(tag)] + 1
        stop = min(self.end[id(tag)] + 1, start + MAX_TEXT_NODES)
        out: list[str] = []
        size = 0
        for node in self.nodes[start:stop]:
            if not isinstance(node, NavigableString) or not _wanted(type(node), types):
                continue
            if text := node.strip():
                out.append(text)
                size += len(" ".join(text.split())) + 1
                if size > max_chars:
                    break
        return " ".join(out)


def _wanted(kind: type, types) -> bool:
    """bs4's test of a string's type against a tag's interesting string types."""
    return kind is types if isinstance(types, type) else kind in types
