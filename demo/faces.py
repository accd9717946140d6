"""Procedural faces for the offline demo: numpy and OpenCV drawing only, no photos, no downloads.

Each face is a shaded skin ellipse with ears, neck and shoulders, hair, brows, eyes (white, iris,
pupil, highlight, lids), a nose (bridge shadow, nostrils, tip highlight) and two-tone lips. It is drawn
upright on its own layer, then rotated a few degrees and composited over a background. The shading
matters: YuNet is a CNN trained on photos and ignores flat cartoons, so sockets, cheeks and lips carry
soft shadows and the whole face is blurred a little. Faces stay frontal and roughly centred so that a
DCGAN trained on them learns something face-like.
"""

from dataclasses import dataclass

import cv2
import numpy as np


def _bgr(*rgb_hex: str) -> np.ndarray:
    """Colours written as RGB hex, as OpenCV's BGR: an (n, 3) float32 array."""
    return np.array([[int(h[i : i + 2], 16) for i in (4, 2, 0)] for h in rgb_hex], dtype=np.float32)


# Skin tones from light to dark; a face interpolates between two neighbours.
SKIN_TONES = _bgr("ffe0c4", "f1cdaa", "e0b48c", "c69669", "a07048", "764e30", "543622")
HAIR_COLOURS = _bgr("191414", "3c281e", "643c23", "96643c", "d2a05a", "8c3228", "afaaaa")
IRIS_COLOURS = _bgr("5a3c28", "3c281e", "3c6e96", "46785a", "5a6e78")
HAIR_STYLES = ("short", "long", "bob", "bald", "bun", "fringe")


def _colour(c) -> tuple[int, int, int]:
    return tuple(int(v) for v in np.clip(c, 0, 255))


def _jitter(rng: np.random.Generator, colour: np.ndarray, amount: float) -> np.ndarray:
    return np.clip(colour + rng.normal(0, amount, 3), 0, 255)


# ---------------------------------------------------------------- backgrounds


def draw_background(rng: np.random.Generator, size: int) -> np.ndarray:
    """A plain colour, a linear gradient or blurred blobs, sometimes with grain (BGR float32)."""
    kind = rng.choice(["plain", "gradient", "gradient", "blobs"])
    a, b = rng.uniform(20, 235, 3), rng.uniform(20, 235, 3)
    if kind == "plain":
        img = np.full((size, size, 3), a, np.float32)
    elif kind == "gradient":
        angle = rng.uniform(0, 2 * np.pi)
        yy, xx = np.mgrid[0:size, 0:size] / (size - 1) - 0.5
        t = np.clip(xx * np.cos(angle) + yy * np.sin(angle) + 0.5, 0, 1)[..., None]
        img = (a * (1 - t) + b * t).astype(np.float32)
    else:
        img = np.full((size, size, 3), a, np.float32)
        for _ in range(rng.integers(3, 8)):
            centre = tuple(int(v) for v in rng.integers(0, size, 2))
            cv2.circle(
                img, centre, int(rng.integers(size // 10, size // 3)), rng.uniform(20, 235, 3).tolist(), -1
            )
        img = cv2.GaussianBlur(img, (0, 0), size / 16)
    if rng.random() < 0.5:
        img = img + rng.normal(0, rng.uniform(2, 8), img.shape).astype(np.float32)
    return img


# ---------------------------------------------------------------- face parts


@dataclass
class _Face:
    """Where the face sits on the drawing canvas, and its skin."""

    cx: int  # centre of the face ellipse
    cy: int
    a: int  # half-width
    b: int  # half-height
    canvas: int  # side of the (padded) drawing canvas
    light: float  # side lighting: brighter right (> 0) or left (< 0)
    skin: np.ndarray  # BGR float32


def _soft_ellipse(canvas, centre, axes, colour, strength: float, blur: float):
    """Blend `colour` into `canvas` through a blurred ellipse mask (soft shadows and highlights)."""
    reach = int(max(axes) + 3 * blur + 2)  # work on the patch the blurred mask can touch
    x0, y0 = max(centre[0] - reach, 0), max(centre[1] - reach, 0)
    patch = canvas[y0 : centre[1] + reach, x0 : centre[0] + reach]
    mask = np.zeros(patch.shape[:2], np.float32)
    cv2.ellipse(mask, (centre[0] - x0, centre[1] - y0), axes, 0, 0, 360, 1.0, -1)
    mask = cv2.GaussianBlur(mask, (0, 0), blur)[..., None] * strength
    patch[:] = patch * (1 - mask) + np.asarray(colour, np.float32) * mask


def _draw_hair_back(layer, alpha, f, hair, style):
    """Hair behind the head: long styles fall to the shoulders."""
    cx, cy, a, b = f.cx, f.cy, f.a, f.b
    if style in ("long", "bob"):
        drop = int(b * (1.3 if style == "long" else 0.55))
        cv2.ellipse(layer, (cx, cy - b // 6), (int(a * 1.22), int(b * 1.08)), 0, 180, 360, hair, -1)
        cv2.rectangle(layer, (cx - int(a * 1.22), cy - b // 6), (cx + int(a * 1.22), cy + drop), hair, -1)
        cv2.ellipse(alpha, (cx, cy - b // 6), (int(a * 1.22), int(b * 1.08)), 0, 180, 360, 1.0, -1)
        cv2.rectangle(alpha, (cx - int(a * 1.22), cy - b // 6), (cx + int(a * 1.22), cy + drop), 1.0, -1)
    if style == "bun":
        centre = (cx, cy - int(b * 1.15))
        cv2.circle(layer, centre, int(a * 0.42), hair, -1)
        cv2.circle(alpha, centre, int(a * 0.42), 1.0, -1)


def _draw_body(layer, alpha, f, skin, shirt):
    """Neck and shoulders below the face."""
    cx, cy, a, b, bottom = f.cx, f.cy, f.a, f.b, f.canvas
    neck_w = int(a * 0.55)
    shoulders = (cx, cy + int(b * 1.75))
    cv2.ellipse(layer, shoulders, (int(a * 2.1), int(b * 0.75)), 0, 180, 360, shirt, -1)
    cv2.rectangle(layer, (cx - int(a * 2.1), shoulders[1]), (cx + int(a * 2.1), bottom), shirt, -1)
    cv2.ellipse(alpha, shoulders, (int(a * 2.1), int(b * 0.75)), 0, 180, 360, 1.0, -1)
    cv2.rectangle(alpha, (cx - int(a * 2.1), shoulders[1]), (cx + int(a * 2.1), bottom), 1.0, -1)
    neck = _colour(skin * 0.78)
    cv2.rectangle(layer, (cx - neck_w, cy + b // 2), (cx + neck_w, shoulders[1] - int(b * 0.45)), neck, -1)
    cv2.ellipse(layer, (cx, shoulders[1] - int(b * 0.5)), (neck_w, int(b * 0.2)), 0, 0, 180, neck, -1)
    cv2.rectangle(alpha, (cx - neck_w, cy + b // 2), (cx + neck_w, shoulders[1] - int(b * 0.3)), 1.0, -1)


def _draw_head(layer, alpha, f, skin, shape_scale):
    """Ears and the face ellipse, shaded darker towards its rim and lit from one side."""
    cx, cy, a, b = f.cx, f.cy, f.a, f.b
    for side in (-1, 1):
        ear = (cx + side * a, cy + b // 10)
        cv2.ellipse(layer, ear, (int(a * 0.16), int(b * 0.22)), 0, 0, 360, _colour(skin * 0.85), -1)
        cv2.ellipse(alpha, ear, (int(a * 0.16), int(b * 0.22)), 0, 0, 360, 1.0, -1)
    h, w = alpha.shape
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    # A jaw narrower than the temples: the ellipse's half-width shrinks below the cheekbones.
    dy = (yy - cy) / b
    half_w = a * np.where(dy > 0.1, 1 - shape_scale * (dy - 0.1) ** 2, 1.0)
    r2 = ((xx - cx) / np.maximum(half_w, 1)) ** 2 + dy**2
    inside = r2 <= 1
    light = 1.08 - 0.28 * r2 + f.light * (xx - cx) / a
    shaded = skin[None, None, :] * np.clip(light, 0.55, 1.25)[..., None]
    layer[inside] = shaded[inside]
    alpha[inside] = 1.0


def _shade_face(canvas, f):
    """Shadows under the cheekbones, highlights on forehead and cheekbones: relief that a CNN looks for."""
    cx, cy, a, b, skin = f.cx, f.cy, f.a, f.b, f.skin
    highlight = np.minimum(skin * 1.3 + 12, 255)
    _soft_ellipse(canvas, (cx, cy - int(b * 0.38)), (int(a * 0.42), int(b * 0.1)), highlight, 0.4, a * 0.1)
    for side in (-1, 1):
        _soft_ellipse(
            canvas,
            (cx + side * int(a * 0.62), cy + int(b * 0.22)),
            (int(a * 0.2), int(a * 0.35)),
            skin * 0.75,
            0.5,
            a * 0.12,
        )
        _soft_ellipse(
            canvas,
            (cx + side * int(a * 0.5), cy + int(b * 0.08)),
            (int(a * 0.18), int(a * 0.1)),
            highlight,
            0.35,
            a * 0.08,
        )


def _draw_hair_top(layer, f, hair, style, rng):
    """Hair over the crown and forehead."""
    cx, cy, a, b = f.cx, f.cy, f.a, f.b
    if style == "bald":
        return
    top = int(b * rng.uniform(0.45, 0.62))  # how far down the forehead the hairline comes, from the top
    mask = np.zeros(layer.shape[:2], np.uint8)
    cv2.ellipse(mask, (cx, cy), (int(a * 1.06), int(b * 1.06)), 0, 180, 360, 255, -1)
    cut = np.zeros_like(mask)
    if style == "fringe":
        cv2.rectangle(cut, (0, cy - b + top + int(b * 0.12)), (mask.shape[1], mask.shape[0]), 255, -1)
    else:
        cv2.ellipse(
            cut, (cx, cy - b + top + int(b * 0.45)), (int(a * 0.86), int(b * 0.5)), 0, 0, 360, 255, -1
        )
        cv2.rectangle(cut, (0, cy - b // 8), (mask.shape[1], mask.shape[0]), 255, -1)
    mask[cut > 0] = 0
    layer[mask > 0] = hair


def _draw_eye(canvas, centre, f, iris, rng):
    ex, ey = centre
    w, h = int(f.a * 0.2), int(f.a * 0.095)
    _soft_ellipse(canvas, (ex, ey - h // 3), (int(w * 1.35), int(h * 2.0)), f.skin * 0.55, 0.6, w / 3)
    cv2.ellipse(canvas, (ex, ey), (w, h), 0, 0, 360, (235, 238, 240), -1)
    look = int(rng.integers(-1, 2)) * max(1, w // 8)
    r_iris = max(2, int(h * 1.0))
    cv2.circle(canvas, (ex + look, ey), r_iris, _colour(iris), -1)
    cv2.circle(canvas, (ex + look, ey), max(1, int(r_iris * 0.5)), (15, 15, 15), -1)
    cv2.circle(canvas, (ex + look - r_iris // 3, ey - r_iris // 3), max(1, r_iris // 4), (250, 250, 250), -1)
    # Lids: the upper one heavy and dark, the lower one faint.
    cv2.ellipse(canvas, (ex, ey), (w, h), 0, 180, 360, (25, 25, 30), max(2, h // 3), cv2.LINE_AA)
    cv2.ellipse(canvas, (ex, ey), (w, h), 0, 0, 180, _colour(f.skin * 0.6), 1, cv2.LINE_AA)


def _draw_brow(canvas, centre, side, f, hair, rng):
    ex, ey = centre
    w = int(f.a * 0.27)
    lift = int(f.b * rng.uniform(0.14, 0.2))
    arch = f.a * rng.uniform(0.04, 0.09)
    xs = np.linspace(-w, w, 9)
    ys = -lift - arch * (1 - (xs / w) ** 2) + side * xs * 0.08
    pts = np.stack([ex + xs, ey + ys], 1).astype(np.int32)
    thickness = max(2, int(f.a * rng.uniform(0.05, 0.09)))
    cv2.polylines(canvas, [pts], False, _colour(np.minimum(hair * 0.7, f.skin * 0.5)), thickness, cv2.LINE_AA)


def _draw_nose(canvas, f, rng):
    cx, cy, a, b = f.cx, f.cy, f.a, f.b
    skin = f.skin
    tip_y = cy + int(b * rng.uniform(0.18, 0.26))
    width = int(a * rng.uniform(0.16, 0.24))
    # Bridge shadows down both sides, a shadow under the tip, nostrils and a highlight on the tip.
    for side in (-1, 1):
        x = cx + side * int(width * 0.55)
        pts = np.array([[cx + side * int(a * 0.1), cy - int(b * 0.12)], [x, tip_y - int(b * 0.04)]], np.int32)
        cv2.polylines(canvas, [pts], False, _colour(skin * 0.72), max(2, int(a * 0.05)), cv2.LINE_AA)
    _soft_ellipse(canvas, (cx, tip_y + int(b * 0.04)), (width, int(b * 0.05)), skin * 0.5, 0.6, a * 0.04)
    for side in (-1, 1):
        cv2.ellipse(
            canvas,
            (cx + side * int(width * 0.45), tip_y + int(b * 0.03)),
            (max(2, int(width * 0.28)), max(1, int(b * 0.025))),
            side * 15,
            0,
            360,
            (30, 30, 40),
            -1,
        )
    _soft_ellipse(
        canvas,
        (cx, tip_y - int(b * 0.04)),
        (int(width * 0.4), int(b * 0.04)),
        np.minimum(skin * 1.25, 255),
        0.7,
        a * 0.03,
    )


def _draw_mouth(canvas, f, rng):
    cx, cy, a, b = f.cx, f.cy, f.a, f.b
    skin = f.skin
    my = cy + int(b * rng.uniform(0.46, 0.54))
    w = int(a * rng.uniform(0.36, 0.48))
    smile = rng.uniform(0.0, 1.0) if rng.random() < 0.6 else 0.0
    lip = _jitter(rng, np.array([70, 70, 170], np.float32) * 0.5 + skin * 0.5, 10)
    _soft_ellipse(canvas, (cx, my + int(b * 0.09)), (int(w * 0.6), int(b * 0.04)), skin * 0.6, 0.5, a * 0.05)
    xs = np.linspace(-w, w, 15)
    curve = -smile * b * 0.06 * (xs / w) ** 2  # corners rise when smiling
    upper = np.stack([cx + xs, my + curve - b * 0.055 * np.sqrt(1 - (xs / w) ** 2)], 1)
    middle = np.stack([cx + xs, my + curve], 1)
    lower = np.stack([cx + xs, my + curve + b * 0.08 * np.sqrt(1 - (xs / w) ** 2)], 1)
    cv2.fillPoly(
        canvas, [np.concatenate([upper, middle[::-1]]).astype(np.int32)], _colour(lip * 0.75), cv2.LINE_AA
    )
    cv2.fillPoly(canvas, [np.concatenate([middle, lower[::-1]]).astype(np.int32)], _colour(lip), cv2.LINE_AA)
    if smile > 0.5:  # parted lips show teeth
        teeth = np.concatenate([middle[3:-3], (middle[3:-3] + [0, b * 0.03])[::-1]]).astype(np.int32)
        cv2.fillPoly(canvas, [teeth], (225, 230, 232), cv2.LINE_AA)
    cv2.polylines(
        canvas, [middle.astype(np.int32)], False, _colour(lip * 0.35), max(1, int(a * 0.02)), cv2.LINE_AA
    )


# ---------------------------------------------------------------- whole images


def draw_face(rng: np.random.Generator, size: int = 256) -> np.ndarray:
    """One frontal face, roughly centred, on a varied background (BGR uint8, size x size)."""
    t = rng.uniform(0, len(SKIN_TONES) - 1)
    skin = SKIN_TONES[int(t)] * (1 - t % 1) + SKIN_TONES[min(int(t) + 1, len(SKIN_TONES) - 1)] * (t % 1)
    skin = _jitter(rng, skin, 6).astype(np.float32)
    hair = _jitter(rng, HAIR_COLOURS[rng.integers(len(HAIR_COLOURS))], 8).astype(np.float32)
    shirt = rng.uniform(20, 235, 3).astype(np.float32)
    a = int(size * rng.uniform(0.2, 0.26))
    # Drawn on a padded canvas so that the shoulders still reach the frame's corners after rotation.
    pad = size // 4
    f = _Face(
        cx=int(size / 2 + rng.uniform(-0.06, 0.06) * size) + pad,
        cy=int(size * rng.uniform(0.44, 0.52)) + pad,
        a=a,
        b=int(a * rng.uniform(1.22, 1.38)),
        canvas=size + 2 * pad,
        light=rng.uniform(-0.12, 0.12),
        skin=skin,
    )
    style = HAIR_STYLES[rng.integers(len(HAIR_STYLES))]

    layer = np.zeros((f.canvas, f.canvas, 3), np.float32)
    alpha = np.zeros(layer.shape[:2], np.float32)
    _draw_hair_back(layer, alpha, f, _colour(hair), style)
    _draw_body(layer, alpha, f, skin, _colour(shirt))
    _draw_head(layer, alpha, f, skin, shape_scale=rng.uniform(0.2, 0.45))
    _shade_face(layer, f)
    _draw_hair_top(layer, f, hair, style, rng)
    eye_y = f.cy - int(f.b * rng.uniform(0.02, 0.1))
    spacing = int(a * rng.uniform(0.36, 0.46))
    iris = _jitter(rng, IRIS_COLOURS[rng.integers(len(IRIS_COLOURS))], 10)
    for side in (-1, 1):
        eye = (f.cx + side * spacing, eye_y)
        _draw_eye(layer, eye, f, iris, rng)
        _draw_brow(layer, eye, side, f, hair, rng)
    _draw_nose(layer, f, rng)
    _draw_mouth(layer, f, rng)

    layer = cv2.GaussianBlur(layer, (0, 0), size / 256 * 0.9)
    alpha = cv2.GaussianBlur(alpha, (0, 0), size / 256 * 1.2)
    angle = rng.uniform(-10, 10)
    rotation = cv2.getRotationMatrix2D((f.cx, f.cy), angle, 1.0)
    rotation[:, 2] -= pad
    layer = cv2.warpAffine(layer, rotation, (size, size), flags=cv2.INTER_LINEAR)
    alpha = cv2.warpAffine(alpha, rotation, (size, size), flags=cv2.INTER_LINEAR)[..., None]
    img = draw_background(rng, size) * (1 - alpha) + layer * alpha
    img += rng.normal(0, 2.5, img.shape)
    return np.clip(img, 0, 255).astype(np.uint8)


def make_faces(n: int, seed: int) -> list[np.ndarray]:
    """`n` faces, the same for the same seed."""
    rng = np.random.default_rng(seed)
    return [draw_face(rng) for _ in range(n)]


def draw_non_face(rng: np.random.Generator, size: int = 256) -> np.ndarray:
    """A landscape or an abstract composition with no face in it (BGR uint8)."""
    img = _draw_landscape(rng, size) if rng.random() < 0.5 else _draw_abstract(rng, size)
    img = cv2.GaussianBlur(img, (0, 0), 0.8) + rng.normal(0, 2.5, img.shape)
    return np.clip(img, 0, 255).astype(np.uint8)


def _draw_landscape(rng: np.random.Generator, size: int) -> np.ndarray:
    sky_top, sky_low = (
        rng.uniform([150, 80, 20], [255, 200, 120]),
        rng.uniform([180, 160, 120], [255, 240, 230]),
    )
    t = np.linspace(0, 1, size, dtype=np.float32)[:, None, None]
    img = np.ascontiguousarray(np.broadcast_to(sky_top * (1 - t) + sky_low * t, (size, size, 3)), np.float32)
    if rng.random() < 0.7:
        centre = (int(rng.integers(size // 6, size - size // 6)), int(rng.integers(size // 10, size // 3)))
        cv2.circle(img, centre, int(rng.integers(size // 16, size // 9)), (120, 230, 250), -1, cv2.LINE_AA)
    for layer in range(int(rng.integers(2, 4))):  # mountain ridges, nearer ones darker and lower
        base = size * (0.45 + 0.15 * layer)
        xs = np.linspace(0, size, 12)
        ys = base - rng.uniform(0, size * 0.25, 12)
        pts = np.concatenate([np.stack([xs, ys], 1), [[size, size], [0, size]]]).astype(np.int32)
        colour = rng.uniform([60, 70, 50], [140, 150, 130]) * (1 - 0.25 * layer)
        cv2.fillPoly(img, [pts], colour.tolist(), cv2.LINE_AA)
    grass = rng.uniform([20, 90, 30], [80, 170, 110])
    cv2.rectangle(img, (0, int(size * 0.82)), (size, size), grass.tolist(), -1)
    return img


def _draw_abstract(rng: np.random.Generator, size: int) -> np.ndarray:
    img = draw_background(rng, size)
    for _ in range(int(rng.integers(4, 10))):
        colour = rng.uniform(0, 255, 3).tolist()
        kind = rng.integers(3)
        p = rng.integers(0, size, 4)
        if kind == 0:
            cv2.rectangle(img, (int(p[0]), int(p[1])), (int(p[2]), int(p[3])), colour, -1)
        elif kind == 1:
            cv2.line(img, (int(p[0]), int(p[1])), (int(p[2]), int(p[3])), colour, int(rng.integers(3, 15)))
        else:
            pts = rng.integers(0, size, (3, 2)).astype(np.int32)
            cv2.fillPoly(img, [pts], colour)
    return img
