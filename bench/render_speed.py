"""Rendering cost of the attack generator, as ratios side by side in one run (not a test).

    python -m bench render_speed
"""
from __future__ import annotations

import time

import numpy as np
from PIL import Image

from clipedit.attacks import LabelStyle, render_attack


def per_render(image: Image.Image, style: LabelStyle, n: int) -> float:
    start = time.perf_counter()
    for seed in range(n):
        render_attack(image, "iPod", style, seed=seed)
    return (time.perf_counter() - start) / n


def add_arguments(ap) -> None:
    """No options."""


def main(args) -> None:
    rng = np.random.default_rng(0)
    tiny = Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8))
    big = tiny.resize((1024, 1024))
    plain = per_render(tiny, LabelStyle(font_size=12), 200)
    warped = per_render(tiny, LabelStyle(font_size=12, rotation=8, perspective=0.1), 200)
    large = per_render(big, LabelStyle(rotation=8, perspective=0.1), 20)
    print(f"64x64 flat note      {1e3 * plain:7.2f} ms  (1.00x)")
    print(f"64x64 warped note    {1e3 * warped:7.2f} ms  ({warped / plain:.2f}x)")
    print(f"1024x1024 warped     {1e3 * large:7.2f} ms  ({large / plain:.2f}x)")


if __name__ == "__main__":
    from bench.harness import script

    script(__file__)
