"""The trade-off chart of sweep and compare: gain on the defended word against the cost on clean and
blank-note accuracy, the Pareto front, rank labels that do not crowd, reading kept beside it."""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Optional

from clipedit.eval.pick import (
    PICK_TOLERANCE,
)
from clipedit.methods.registry import METHODS


def pareto_front(points: Sequence[tuple[float, float]]) -> list[int]:
    """Indices of the points no other point beats on both axes (cost lower-or-equal, gain higher-or-equal,
    one strictly), ordered by cost."""
    front = [i for i, (c, g) in enumerate(points)
             if not any((c2 <= c and g2 >= g) and (c2 < c or g2 > g) for c2, g2 in points)]
    return sorted(front, key=lambda i: (points[i][0], points[i][1]))


def cost(row: dict[str, Any]) -> float:
    """A row's cost on the trade-off plot: the larger of its clean and blank-note losses."""
    return max(row["clean_loss"], row["blank_loss"])


def rank_labels(rows: Sequence[dict[str, Any]], points: Sequence[tuple[float, float]], near: float = 1.5
                ) -> list[tuple[tuple[float, float], str, int]]:
    """The rank annotations of a trade-off plot: ranks on the same spot (to 0.1 point) joined in one label
    (``4, 16, 32``), and a label within ``near`` points of an earlier one raised a line (its stack index)."""
    spots: dict[tuple[float, float], list[str]] = {}
    for r, (x, y) in zip(rows, points):
        if r.get("rank") is not None:
            spots.setdefault((round(x, 1), round(y, 1)), []).append(str(r["rank"]))
    out: list[tuple[tuple[float, float], str, int]] = []
    for (x, y), ranks in spots.items():
        stack = sum(abs(x - px) < near and abs(y - py) < near for (px, py), _, _ in out)
        out.append(((x, y), ", ".join(dict.fromkeys(ranks)), stack))
    return out


def _plot_reading(ax, rows: Sequence[dict[str, Any]], colours: dict, markers: dict,
                  baseline: Optional[dict[str, Any]], picked: Optional[dict[str, Any]], unseen: bool = False) -> None:
    """Defended-word text-note accuracy vs reading kept (signs), each point with its 95% intervals in both
    directions where the row carries them (``intervals``: ``text_acc``, ``reading_acc``; ``reading``); with
    ``unseen`` (compare's plane, one point a method), also unseen-word text-note accuracy (hollow markers, the
    same colour) and each method's name; the unedited model (``baseline``) marked with its own intervals."""
    def bars(r: dict[str, Any], key: str, x: float, y: float, colour, alpha: float = 0.35) -> None:
        iv = r.get("intervals") or {}
        xci = (iv.get("reading_acc") or r.get("reading") or {}).get("ci")
        yci = (iv.get(key) or {}).get("ci")
        if xci or yci:
            ax.errorbar(x, y, xerr=[[x - 100 * xci[0]], [100 * xci[1] - x]] if xci else None,
                        yerr=[[y - 100 * yci[0]], [100 * yci[1] - y]] if yci else None, fmt="none", ecolor=colour,
                        alpha=alpha, lw=0.8, zorder=2)

    for r in rows:
        lab = r.get("site") or r["method"]
        marker = markers.get(r["method"].split(" ")[0], "X")
        x, y = 100 * r["reading_acc"], 100 * r["text_acc"]
        bars(r, "text_acc", x, y, colours[lab])
        ax.scatter(x, y, marker=marker, color=colours[lab], s=36, zorder=3)
        if unseen and r.get("other_text_acc") is not None:
            yo = 100 * r["other_text_acc"]
            bars(r, "other_text_acc", x, yo, colours[lab], alpha=0.2)
            ax.scatter(x, yo, marker=marker, facecolors="none", edgecolors=colours[lab], s=36, zorder=3)
        if r.get("rank") is not None:
            ax.annotate(str(r["rank"]), (x, y), textcoords="offset points", xytext=(4, 3), fontsize=7)
        elif unseen:  # the compare plane: one point a method, named
            ax.annotate(r["method"], (x, y), textcoords="offset points", xytext=(5, 4), fontsize=7,
                        color=colours[lab])
    if baseline is not None and baseline.get("reading_acc") is not None and baseline.get("text_acc") is not None:
        bx, by = 100 * baseline["reading_acc"], 100 * baseline["text_acc"]
        bars(baseline, "text_acc", bx, by, "black", alpha=0.6)
        ax.scatter(bx, by, marker="x", color="black", s=60, zorder=4, label="unedited")
        if unseen and baseline.get("other_text_acc") is not None:
            bars(baseline, "other_text_acc", bx, 100 * baseline["other_text_acc"], "black", alpha=0.35)
            ax.scatter(bx, 100 * baseline["other_text_acc"], marker="o", facecolors="none", edgecolors="black",
                       s=36, zorder=4, label="unedited, unseen words")
        ax.axvline(bx, color="black", lw=0.7, ls="--", alpha=0.6)
        if baseline.get("blank_acc") is not None:
            ax.axhline(100 * baseline["blank_acc"], color="grey", lw=0.8, ls=":", label="unedited blank note")
    if unseen and any(r.get("other_text_acc") is not None for r in rows):
        ax.scatter([], [], marker="o", facecolors="none", edgecolors="grey", s=36,
                   label="hollow: unseen words (same colour)")
    if picked is not None and picked.get("reading_acc") is not None:
        ax.scatter(100 * picked["reading_acc"], 100 * picked["text_acc"], s=160, facecolors="none",
                   edgecolors="red", label="pick", zorder=4)
    n = (rows[0].get("reading") or {}).get("n")
    ax.set_xlabel(f"reading kept: signs read correctly, %{f' (n={n})' if n else ''}")
    ax.set_ylabel("text-note accuracy, %" + (" (filled: defended word)" if unseen else " (defended word)"))
    ax.set_title("attack removed vs reading kept\n(up and right is better; bars: 95% intervals)", fontsize=10)
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=7, loc="best")


def plot_tradeoff(rows: Sequence[dict[str, Any]], path, title: str = "", tolerance: float = PICK_TOLERANCE,
                  picked: Optional[dict[str, Any]] = None, baseline: Optional[dict[str, Any]] = None,
                  unseen: bool = False) -> None:
    """Gain (defended-word text-note accuracy) vs cost (clean/blank loss), one marker per method,
    one colour per site, the Pareto front drawn; written as a PNG at ``path``. When the rows carry reading
    (``reading_acc`` and ``text_acc``), a second panel beside it: defended-word text-note accuracy vs
    reading kept, each point with its 95% intervals both ways (the rows' ``intervals``), the unedited model
    (``baseline``) marked; ``unseen``: unseen-word text-note accuracy too (hollow markers)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from clipedit.io import atomic_path

    markers = dict(zip(METHODS, "o*s^DvPXhp<>"))  # one marker a method of the table, in table order
    labels = sorted({r.get("site") or r["method"] for r in rows}, key=lambda s: [r.get("site") or r["method"]
                                                                                   for r in rows].index(s))
    colours = {lab: plt.cm.tab10(i % 10) for i, lab in enumerate(labels)}
    points = [(100 * cost(r), 100 * r["gain"]) for r in rows]
    reading = [r for r in rows if r.get("reading_acc") is not None and r.get("text_acc") is not None]
    if reading:
        fig, (ax, ax_read) = plt.subplots(1, 2, figsize=(12.5, 4.8), dpi=120, gridspec_kw={"width_ratios": [7, 5]})
    else:
        fig, ax = plt.subplots(figsize=(7, 4.5), dpi=120)
    seen = set()
    for r, (x, y) in zip(rows, points):
        lab = r.get("site") or r["method"]
        legend = f"{r['method']}: {lab.removeprefix('visual.')}" if r.get("site") else r["method"]
        ax.scatter(x, y, marker=markers.get(r["method"].split(" ")[0], "X"), color=colours[lab], s=36,
                   label=None if legend in seen else legend, zorder=3, clip_on=False)  # whole at the frame
        seen.add(legend)
    for (x, y), ranks, stack in rank_labels(rows, points):  # one label per spot, stacked where spots crowd
        ax.annotate(ranks, (x, y), textcoords="offset points", xytext=(4, 3 + 8 * stack), fontsize=7)
    front = pareto_front(points)
    # the front as a staircase through its points, each ringed: visible even when it is a single point
    ax.plot([points[i][0] for i in front], [points[i][1] for i in front], "k-", lw=1.2, drawstyle="steps-post",
            marker="o", ms=11, mfc="none", mec="black", mew=1.0,
            label=f"Pareto front ({len(front)} setting{'s' if len(front) != 1 else ''})",
            zorder=4)
    ax.axvline(100 * tolerance, color="grey", lw=0.8, ls=":", label=f"tolerance {100 * tolerance:.3g} pt")
    if picked is not None:
        ax.scatter(100 * cost(picked), 100 * picked["gain"], s=160, facecolors="none", edgecolors="red",
                   label="pick", zorder=4)
    ax.set_xscale("symlog", linthresh=1.0)  # costs under a point stay readable beside large ones
    ax.margins(0.06)  # markers and rings on the extreme settings are not cut by the frame
    from matplotlib.ticker import FuncFormatter, SymmetricalLogLocator

    # ticks at 1, 2, 5 x 10^k (and the linear part): a narrow range of costs still gets labelled ticks
    ax.xaxis.set_major_locator(SymmetricalLogLocator(base=10, linthresh=1.0, subs=[1.0, 2.0, 5.0]))
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    ax.set_xlabel("cost: max(clean loss, blank-note loss), points (symlog scale)")
    ax.set_ylabel("gain: defended-word text-note accuracy, points")
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="best")
    if reading:
        _plot_reading(ax_read, reading, colours, markers, baseline, picked, unseen=unseen)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
