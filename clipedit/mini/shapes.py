"""Procedural drawings of the mini world's objects and backgrounds.

Every object is drawn with PIL onto a transparent layer, inside a box given in
layer pixels, with colours chosen by the caller's random generator. Shapes are
kept simple and bold so that they stay distinguishable at 64x64.
"""
from __future__ import annotations

import colorsys
import math
from collections.abc import Callable

import numpy as np
from PIL import ImageDraw

Box = tuple[float, float, float, float]
RGB = tuple[int, int, int]
Drawer = Callable[[ImageDraw.ImageDraw, Box, np.random.Generator, RGB], None]


# ----------------------------------------------------------------- colours
def random_colour(rng: np.random.Generator, sat: tuple[float, float] = (0.45, 1.0),
                  val: tuple[float, float] = (0.35, 1.0), hue: float | None = None) -> RGB:
    """A random saturated colour (optionally around a given hue in [0, 1))."""
    h = rng.random() if hue is None else (hue + rng.normal(0, 0.03)) % 1.0
    r, g, b = colorsys.hsv_to_rgb(h, rng.uniform(*sat), rng.uniform(*val))
    return int(r * 255), int(g * 255), int(b * 255)


def shade(colour: RGB, factor: float) -> RGB:
    """Darken (factor < 1) or lighten (factor > 1) a colour."""
    if factor <= 1:
        return tuple(int(c * factor) for c in colour)  # type: ignore[return-value]
    return tuple(int(c + (255 - c) * (factor - 1)) for c in colour)  # type: ignore[return-value]


def grey(rng: np.random.Generator, lo: int = 20, hi: int = 235) -> RGB:
    v = int(rng.integers(lo, hi))
    return v, v, v


# ----------------------------------------------------------------- objects
def _ipod(d: ImageDraw.ImageDraw, box: Box, rng: np.random.Generator, body: RGB) -> None:
    x0, y0, x1, y1 = box
    w, h = x1 - x0, y1 - y0
    body = grey(rng, 150, 250) if rng.random() < 0.5 else body
    d.rounded_rectangle(box, radius=0.16 * w, fill=body, outline=shade(body, 0.55), width=max(1, int(w * 0.03)))
    screen_col = random_colour(rng, sat=(0.2, 0.7), val=(0.15, 0.55)) if rng.random() < 0.6 else grey(rng, 10, 80)
    d.rectangle((x0 + 0.13 * w, y0 + 0.08 * h, x1 - 0.13 * w, y0 + 0.42 * h), fill=screen_col)
    cx, cy, r = (x0 + x1) / 2, y0 + 0.70 * h, 0.30 * w
    wheel = shade(body, 0.7) if sum(body) > 360 else shade(body, 1.6)
    d.ellipse((cx - r, cy - r, cx + r, cy + r), fill=wheel)
    r2 = 0.36 * r
    d.ellipse((cx - r2, cy - r2, cx + r2, cy + r2), fill=body)


def _mug(d, box, rng, col):
    x0, y0, x1, y1 = box
    w, h = x1 - x0, y1 - y0
    bx1 = x0 + 0.72 * w
    hw = max(2, int(0.08 * w))
    d.ellipse((bx1 - 0.16 * w, y0 + 0.2 * h, x1, y0 + 0.75 * h), outline=col, width=hw)
    d.rounded_rectangle((x0, y0 + 0.05 * h, bx1, y1), radius=0.1 * w, fill=col)
    d.ellipse((x0, y0, bx1, y0 + 0.14 * h), fill=shade(col, 0.6))
    if rng.random() < 0.5:  # a stripe round the mug
        sy = y0 + rng.uniform(0.35, 0.7) * h
        d.rectangle((x0, sy, bx1, sy + 0.1 * h), fill=shade(col, 1.5))


def _apple(d, box, rng, col):
    x0, y0, x1, y1 = box
    w, h = x1 - x0, y1 - y0
    col = random_colour(rng, hue=rng.choice([0.0, 0.02, 0.25, 0.13]), sat=(0.6, 1.0), val=(0.55, 1.0))
    top = y0 + 0.2 * h
    d.ellipse((x0, top, x0 + 0.62 * w, y1), fill=col)
    d.ellipse((x0 + 0.38 * w, top, x1, y1), fill=col)
    d.ellipse((x0 + 0.15 * w, top + 0.1 * h, x1 - 0.15 * w, y1 - 0.02 * h), fill=col)
    cx = (x0 + x1) / 2
    d.line((cx, top + 0.08 * h, cx + 0.05 * w, y0), fill=(90, 55, 20), width=max(2, int(0.06 * w)))
    d.ellipse((cx + 0.06 * w, y0 + 0.02 * h, cx + 0.36 * w, y0 + 0.16 * h), fill=(40, 150, 40))


def _ball(d, box, rng, col):
    x0, y0, x1, y1 = box
    side = min(x1 - x0, y1 - y0)
    x1, y1 = x0 + side, y0 + side
    kind = rng.integers(3)
    if kind == 0:  # beach ball: coloured segments
        cols = [random_colour(rng) for _ in range(3)] + [(245, 245, 245)]
        for i in range(6):
            d.pieslice((x0, y0, x1, y1), i * 60, (i + 1) * 60, fill=cols[i % len(cols)])
    elif kind == 1:  # tennis-like ball with seams
        d.ellipse((x0, y0, x1, y1), fill=col)
        lw = max(2, int(side * 0.05))
        d.arc((x0 - 0.55 * side, y0, x0 + 0.45 * side, y1), -60, 60, fill=(250, 250, 250), width=lw)
        d.arc((x1 - 0.45 * side, y0, x1 + 0.55 * side, y1), 120, 240, fill=(250, 250, 250), width=lw)
    else:  # plain ball with a highlight
        d.ellipse((x0, y0, x1, y1), fill=col)
        d.ellipse((x0 + 0.2 * side, y0 + 0.15 * side, x0 + 0.42 * side, y0 + 0.35 * side), fill=shade(col, 1.7))


def _clock(d, box, rng, col):
    x0, y0, x1, y1 = box
    side = min(x1 - x0, y1 - y0)
    x1, y1 = x0 + side, y0 + side
    cx, cy, r = (x0 + x1) / 2, (y0 + y1) / 2, side / 2
    d.ellipse((x0, y0, x1, y1), fill=col)
    face = grey(rng, 215, 255)
    ri = r * 0.82
    d.ellipse((cx - ri, cy - ri, cx + ri, cy + ri), fill=face)
    ink = grey(rng, 0, 60)
    for k in range(12):
        a = k * math.pi / 6
        d.line((cx + 0.68 * r * math.cos(a), cy + 0.68 * r * math.sin(a),
                cx + 0.8 * r * math.cos(a), cy + 0.8 * r * math.sin(a)), fill=ink, width=max(1, int(side * 0.03)))
    for length, width in ((0.45, 0.06), (0.68, 0.04)):
        a = rng.uniform(0, 2 * math.pi)
        d.line((cx, cy, cx + length * r * math.cos(a), cy + length * r * math.sin(a)), fill=ink,
               width=max(2, int(side * width)))


def _key(d, box, rng, col):
    x0, y0, x1, y1 = box
    w, h = x1 - x0, y1 - y0
    cy = (y0 + y1) / 2
    r = 0.24 * w
    d.ellipse((x0, cy - r, x0 + 2 * r, cy + r), fill=col)
    hr = 0.4 * r
    d.ellipse((x0 + r - hr, cy - hr, x0 + r + hr, cy + hr), fill=(0, 0, 0, 0))
    t = max(3, 0.11 * h)
    d.rectangle((x0 + 1.8 * r, cy - t / 2, x1, cy + t / 2), fill=col)
    for k in range(int(rng.integers(2, 4))):
        tx = x1 - (0.06 + 0.12 * k) * w
        d.rectangle((tx - 0.07 * w, cy, tx, cy + rng.uniform(0.12, 0.22) * h), fill=col)


def _star(d, box, rng, col):
    x0, y0, x1, y1 = box
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    r = min(x1 - x0, y1 - y0) / 2
    inner = rng.uniform(0.38, 0.5)
    pts = []
    for k in range(10):
        a = -math.pi / 2 + k * math.pi / 5
        rr = r if k % 2 == 0 else r * inner
        pts.append((cx + rr * math.cos(a), cy + rr * math.sin(a)))
    d.polygon(pts, fill=col)


def _house(d, box, rng, col):
    x0, y0, x1, y1 = box
    w, h = x1 - x0, y1 - y0
    roof_y = y0 + 0.42 * h
    d.rectangle((x0 + 0.1 * w, roof_y, x1 - 0.1 * w, y1), fill=col)
    roof = random_colour(rng, hue=rng.choice([0.0, 0.05, 0.6]), val=(0.3, 0.7))
    d.polygon([(x0, roof_y + 1), ((x0 + x1) / 2, y0), (x1, roof_y + 1)], fill=roof)
    dark = shade(col, 0.45)
    d.rectangle((x0 + 0.42 * w, y1 - 0.3 * h, x0 + 0.58 * w, y1), fill=dark)
    win = (240, 230, 150) if rng.random() < 0.5 else (170, 210, 240)
    d.rectangle((x0 + 0.18 * w, roof_y + 0.1 * h, x0 + 0.34 * w, roof_y + 0.24 * h), fill=win)
    d.rectangle((x1 - 0.34 * w, roof_y + 0.1 * h, x1 - 0.18 * w, roof_y + 0.24 * h), fill=win)


def _tree(d, box, rng, col):
    x0, y0, x1, y1 = box
    w, h = x1 - x0, y1 - y0
    cx = (x0 + x1) / 2
    trunk = random_colour(rng, hue=0.07, sat=(0.5, 0.8), val=(0.25, 0.5))
    d.rectangle((cx - 0.09 * w, y0 + 0.55 * h, cx + 0.09 * w, y1), fill=trunk)
    leaves = random_colour(rng, hue=rng.choice([0.3, 0.33, 0.25]), sat=(0.5, 0.9), val=(0.35, 0.8))
    if rng.random() < 0.5:  # round crown
        d.ellipse((x0, y0, x1, y0 + 0.7 * h), fill=leaves)
    else:  # conifer
        for k in range(3):
            top = y0 + k * 0.2 * h
            d.polygon([(cx, top), (x0 + (2 - k) * 0.05 * w, top + 0.38 * h),
                       (x1 - (2 - k) * 0.05 * w, top + 0.38 * h)], fill=leaves)


def _car(d, box, rng, col):
    x0, y0, x1, y1 = box
    w, h = x1 - x0, y1 - y0
    d.polygon([(x0 + 0.22 * w, y0 + 0.42 * h), (x0 + 0.34 * w, y0 + 0.12 * h), (x0 + 0.68 * w, y0 + 0.12 * h),
               (x0 + 0.82 * w, y0 + 0.42 * h)], fill=shade(col, 0.8))
    d.rectangle((x0 + 0.38 * w, y0 + 0.18 * h, x0 + 0.64 * w, y0 + 0.4 * h), fill=(180, 215, 240))
    d.rounded_rectangle((x0, y0 + 0.4 * h, x1, y0 + 0.78 * h), radius=0.08 * h, fill=col)
    r = 0.12 * w
    for wx in (x0 + 0.24 * w, x0 + 0.76 * w):
        d.ellipse((wx - r, y1 - 2 * r, wx + r, y1), fill=(25, 25, 25))
        d.ellipse((wx - 0.45 * r, y1 - 1.45 * r, wx + 0.45 * r, y1 - 0.55 * r), fill=(170, 170, 170))


def _fish(d, box, rng, col):
    x0, y0, x1, y1 = box
    w, h = x1 - x0, y1 - y0
    cy = (y0 + y1) / 2
    d.polygon([(x0 + 0.68 * w, cy), (x1, y0 + 0.15 * h), (x1, y1 - 0.15 * h)], fill=shade(col, 0.75))
    d.ellipse((x0, y0 + 0.2 * h, x0 + 0.78 * w, y1 - 0.2 * h), fill=col)
    er = 0.05 * w
    ex, ey = x0 + 0.18 * w, cy - 0.06 * h
    d.ellipse((ex - er, ey - er, ex + er, ey + er), fill=(250, 250, 250))
    d.ellipse((ex - er / 2, ey - er / 2, ex + er / 2, ey + er / 2), fill=(0, 0, 0))
    if rng.random() < 0.5:  # stripes
        for k in range(2):
            sx = x0 + (0.35 + 0.15 * k) * w
            d.line((sx, y0 + 0.26 * h, sx, y1 - 0.26 * h), fill=shade(col, 1.6), width=max(2, int(0.05 * w)))


def _umbrella(d, box, rng, col):
    x0, y0, x1, y1 = box
    w, h = x1 - x0, y1 - y0
    cx = (x0 + x1) / 2
    d.pieslice((x0, y0, x1, y0 + 1.0 * h), 180, 360, fill=col)
    sr = w / 8
    rim = y0 + 0.5 * h
    for k in range(4):  # scalloped rim
        sx = x0 + sr + 2 * sr * k
        d.ellipse((sx - sr, rim - sr * 0.7, sx + sr, rim + sr * 0.7), fill=(0, 0, 0, 0))
    lw = max(2, int(0.05 * w))
    shaft = grey(rng, 20, 90)
    d.line((cx, y0 + 0.05 * h, cx, y1 - 0.12 * h), fill=shaft, width=lw)
    d.arc((cx - 0.16 * w, y1 - 0.24 * h, cx, y1), 0, 180, fill=shaft, width=lw)


# name -> (drawer, aspect ratio width/height of its box)
OBJECTS: dict[str, tuple[Drawer, float]] = {
    "ipod": (_ipod, 0.62),
    "mug": (_mug, 1.1),
    "apple": (_apple, 1.0),
    "ball": (_ball, 1.0),
    "clock": (_clock, 1.0),
    "key": (_key, 1.9),
    "star": (_star, 1.0),
    "house": (_house, 1.0),
    "tree": (_tree, 0.75),
    "car": (_car, 1.7),
    "fish": (_fish, 1.6),
    "umbrella": (_umbrella, 1.1),
}


# ------------------------------------------------------------- backgrounds
def background(rng: np.random.Generator, size: int) -> np.ndarray:
    """A random ``size`` x ``size`` RGB background: flat, gradient, noise, stripes or checks."""
    base = np.array(random_colour(rng, sat=(0.0, 0.6), val=(0.2, 0.95)), dtype=np.float32)
    other = np.array(random_colour(rng, sat=(0.0, 0.6), val=(0.2, 0.95)), dtype=np.float32)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    kind = rng.integers(5)
    if kind == 0:
        t = np.zeros_like(xx)
    elif kind == 1:
        a = rng.uniform(0, 2 * math.pi)
        t = (xx * math.cos(a) + yy * math.sin(a))
        t = (t - t.min()) / max(float(t.max() - t.min()), 1e-6)
    elif kind == 2:
        coarse = rng.random((size // 8 + 1, size // 8 + 1)).astype(np.float32)
        t = np.kron(coarse, np.ones((8, 8), np.float32))[:size, :size] * 0.6
    elif kind == 3:
        period = rng.uniform(0.08, 0.25)
        a = rng.uniform(0, math.pi)
        t = 0.35 * (np.sin((xx * math.cos(a) + yy * math.sin(a)) / period * 2 * math.pi) > 0)
    else:
        cells = int(rng.integers(3, 8))
        t = 0.3 * (((xx * cells).astype(int) + (yy * cells).astype(int)) % 2)
    img = base[None, None] * (1 - t[..., None]) + other[None, None] * t[..., None]
    img += rng.normal(0, rng.uniform(0, 10), img.shape).astype(np.float32)
    return np.clip(img, 0, 255).astype(np.uint8)
