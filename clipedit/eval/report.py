"""A self-contained HTML report of an audit or a defense: table, bar chart, attacked images, exemplar.

Everything is embedded (PNG images as base64 ``data:`` URIs), so the one file can be mailed or
attached to an issue. Built with the standard library (:mod:`html`, :mod:`base64`) and matplotlib's
object API (no pyplot, no global backend switch).
"""
from __future__ import annotations

import base64
import datetime
import html
import io
import os
import textwrap
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import numpy as np
from PIL import Image

from clipedit.data.benchmarks import LoadedBenchmark
from clipedit.eval.heldout import EvalSets
from clipedit.eval.results import UNDEFINED, format_value
from clipedit.io import atomic_path

THUMB_PX = 200  # longest side of an image in the grid
GRID_LIMIT = 24  # attacked images shown
SERIES_COLOURS = ("#9aa5b1", "#2f7ed8")  # accuracies: before (or the only series), after
LOWER_IS_BETTER_COLOURS = ("#f2b8a2", "#d2461e")  # attack success: before (or the only series), after
LOWER_IS_BETTER_NOTE = " (lower is better)"


def lower_is_better(label: str) -> bool:
    """Whether a chart row is a rate the defender wants low (attack success), not an accuracy."""
    return "attack success" in label.lower()


@dataclass
class GridItem:
    """One attacked image in the report's grid.

    Attributes:
        image: the attacked image.
        true_class: what it shows.
        word: what is written on it (None when unknown).
        before: the predicted class (before the defense, or the only prediction).
        after: the predicted class after the defense (None for an audit).
    """

    image: Image.Image
    true_class: str
    word: Optional[str]
    before: str
    after: Optional[str] = None


def exemplars_fact(*, photo_pair: bool = False, words: Sequence[str] = (), renders: int = 0,
                   vocabulary: Optional[str] = None, heldout_words: int = 0) -> str:
    """What a defense's exemplars were, for a report's header: one real photo pair, or ``len(words) x renders``
    renders of named words, or of a vocabulary's exemplar words (``vocabulary``: where they came from)."""
    if photo_pair:
        return "one real photo pair (--exemplar, --blank, --mask)"
    n = len(words) * renders
    if vocabulary is not None:
        return (f"{n} rendered: {len(words)} vocabulary words ({vocabulary}) x {renders} renders; the evaluation "
                f"writes {heldout_words} held-out words, never rendered as exemplars")
    shown = ", ".join(words[:5]) + (" …" if len(words) > 5 else "")
    return f"{n} rendered: {len(words)} word{'s' if len(words) != 1 else ''} ({shown}) x {renders} renders"


def png_bytes(image: Image.Image | np.ndarray, max_side: int = THUMB_PX) -> bytes:
    """``image`` (PIL, or a boolean / uint8 array such as a mask) as PNG bytes, at most ``max_side`` px."""
    if isinstance(image, np.ndarray):
        array = image.astype(np.uint8) * 255 if image.dtype == bool else image.astype(np.uint8)
        image = Image.fromarray(array)
    image = image.copy()
    image.thumbnail((max_side, max_side))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", optimize=True)
    return buffer.getvalue()


def data_uri(png: bytes) -> str:
    """A ``data:image/png;base64,…`` URI of PNG bytes."""
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def bar_chart(rows: Sequence[Sequence[Any]], series: Sequence[str], title: str = "") -> bytes:
    """A grouped bar chart (PNG bytes) of rates in percent.

    Args:
        rows: ``[label, value, …]`` with one value per series (a rate in 0..1, or None); extra
            trailing cells (e.g. counts) are ignored.
        series: the series names (``["rate"]`` or ``["before", "after"]``).
        title: the chart's title.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.patches import Patch

    lower = [lower_is_better(str(r[0])) for r in rows]
    labels = [str(r[0]) + (LOWER_IS_BETTER_NOTE if low else "") for r, low in zip(rows, lower)]
    legend_rows = (2 if any(lower) and not all(lower) else 1) * (len(series) if len(series) > 1 else 1)
    legend_in = 0.2 + 0.2 * -(-legend_rows // 2)
    fig = Figure(figsize=(8, 0.5 + legend_in + 0.55 * max(len(rows), 1) * max(len(series), 1) ** 0.5), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    height = 0.8 / len(series)
    y = np.arange(len(rows))
    def colour(s: int, low: bool) -> str:
        palette = LOWER_IS_BETTER_COLOURS if low else SERIES_COLOURS
        return palette[s % len(palette)] if len(series) > 1 else palette[1]

    for s in range(len(series)):
        values = [r[1 + s] if r[1 + s] is not None else np.nan for r in rows]
        offsets = y + (s - (len(series) - 1) / 2) * height
        bars = ax.barh(offsets, [100 * v for v in values], height=height * 0.92,
                       color=[colour(s, low) for low in lower])
        for bar, v in zip(bars, values):  # an undefined figure (n = 0) is written n/a, not drawn as 0
            ax.text(bar.get_width() + 1 if not np.isnan(v) else 1, bar.get_y() + bar.get_height() / 2,
                    f"{100 * v:.1f}%" if not np.isnan(v) else UNDEFINED, va="center", fontsize=8,
                    color="black" if not np.isnan(v) else "#7b8794")
    ax.set_yticks(y, labels)
    ax.invert_yaxis()
    ax.set_xlim(0, 112)
    ax.set_xlabel("%")
    ax.spines[["top", "right"]].set_visible(False)
    handles = []  # one legend entry per colour drawn: accuracies (higher is better), attack success (lower)
    for low, what in ((False, "accuracy (higher is better)"), (True, "attack success (lower is better)")):
        if low in lower:
            handles += [Patch(color=colour(s, low), label=f"{what}, {name}" if len(series) > 1 else what)
                        for s, name in enumerate(series)]
    fig.legend(handles=handles, loc="lower center", ncol=min(len(handles), 2), frameon=False, fontsize=8)
    if title:  # over the whole figure, wrapped to its width (not cut at the right edge by long row labels)
        fig.suptitle(textwrap.fill(title, 100), fontsize=10)
    fig.tight_layout(rect=(0, legend_in / fig.get_figheight(), 1, 1))
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    return buffer.getvalue()


def write_chart(path: str | os.PathLike, rows: Sequence[Sequence[Any]], series: Sequence[str],
                title: str = "") -> Path:
    """Write :func:`bar_chart` to ``path`` (atomically)."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(bar_chart(rows, series, title))
    return Path(path)


def grid_items(images: Sequence[Image.Image], true_classes: Sequence[str], words: Sequence[Optional[str]],
               before: Sequence[str], after: Optional[Sequence[str]] = None,
               limit: int = GRID_LIMIT) -> list[GridItem]:
    """Up to ``limit`` items spread evenly over the set (first and last included)."""
    n, k = len(images), min(limit, len(images))
    picks = sorted({round(i * (n - 1) / max(k - 1, 1)) for i in range(k)})
    return [GridItem(images[i], true_classes[i], words[i], before[i], after[i] if after is not None else None)
            for i in picks]


def attacks_grid(attacks: Sequence[Any], labels: Sequence[int], classnames: Sequence[str], before: Sequence[int],
                 after: Optional[Sequence[int]] = None) -> list[GridItem]:
    """Grid items of rendered attacks (``attacks.Attack``) and predicted class indices."""
    names = list(classnames)
    return grid_items([a.attacked for a in attacks], [names[i] for i in labels], [a.text for a in attacks],
                      [names[i] for i in before], [names[i] for i in after] if after is not None else None)


def benchmark_grid(data: LoadedBenchmark, before: Sequence[int],
                   after: Optional[Sequence[int]] = None) -> list[GridItem]:
    """Grid items of a benchmark's images with writing on them, and predicted class indices (one per image)."""
    names = data.classnames
    written = [i for i, r in enumerate(data.records) if r.word is not None]
    return grid_items(_Picked(data.images, written), [data.records[i].true_class for i in written],
                      [data.records[i].word for i in written], [names[before[i]] for i in written],
                      [names[after[i]] for i in written] if after is not None else None)


def evaluation_grid(sets: EvalSets | LoadedBenchmark, before: Sequence[int],
                    after: Optional[Sequence[int]] = None) -> list[GridItem]:
    """Grid items of a defense's evaluation: the defended words' held-out set, or a benchmark."""
    if isinstance(sets, LoadedBenchmark):
        return benchmark_grid(sets, before, after)
    attacks, labels = sets.edited
    return attacks_grid(attacks, labels, sets.classnames, before, after)


class _Picked(Sequence[Image.Image]):
    """``images[indices[i]]``, read only when indexed (a benchmark's images are files)."""

    def __init__(self, images: Sequence[Image.Image], indices: Sequence[int]) -> None:
        self.images, self.indices = images, list(indices)

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i):  # type: ignore[override]
        return self.images[self.indices[i]]


_CSS = """
body{font-family:system-ui,-apple-system,'Segoe UI',sans-serif;margin:0;background:#f6f7f9;color:#1d2733}
main{max-width:1080px;margin:0 auto;padding:24px 28px 48px}
h1{font-size:22px;margin:0 0 4px}
h2{font-size:16px;margin:28px 0 10px;border-bottom:1px solid #dde2e8;padding-bottom:4px}
.facts{color:#52606d;font-size:13px;margin:0 0 8px} .facts b{color:#1d2733;font-weight:600}
table{border-collapse:collapse;background:#fff;font-size:14px;box-shadow:0 1px 2px #0001}
th,td{padding:6px 14px;border-bottom:1px solid #e6e9ee;text-align:right} th:first-child,td:first-child{text-align:left}
th{background:#eef1f5;font-weight:600}
.chart{background:#fff;box-shadow:0 1px 2px #0001;max-width:100%}
.grid{display:grid;grid-template-columns:repeat(auto-fill,minmax(168px,1fr));gap:12px}
figure{margin:0;background:#fff;border:2px solid #e6e9ee;border-radius:6px;padding:6px;box-shadow:0 1px 2px #0001}
figure.wrong{border-color:#d64545} figure img{width:100%;height:150px;object-fit:contain;background:#fafafa}
figcaption{font-size:12px;line-height:1.45;margin-top:4px} .ok{color:#1f7a3d} .bad{color:#c62828;font-weight:600}
.word{font-style:italic} .muted{color:#7b8794}
.exemplar{display:flex;gap:14px;flex-wrap:wrap} .exemplar figure{width:220px}
.note{font-size:12px;color:#7b8794;margin-top:8px}
"""


def render_report(*, title: str, facts: Sequence[tuple[str, str]], header: Sequence[str],
                  rows: Sequence[Sequence[Any]], chart: Optional[bytes], grid: Sequence[GridItem],
                  exemplar: Optional[dict[str, Image.Image | np.ndarray]] = None,
                  notes: Sequence[str] = (),
                  tables: Sequence[tuple[str, Sequence[str], Sequence[Sequence[Any]]]] = (),
                  chart_caption: str = "bar chart of the figures") -> str:
    """The report as one HTML string.

    Args:
        title: the page's heading.
        facts: (name, value) lines under it (model, dataset, counts …).
        header, rows: the figures table (floats shown as percentages).
        chart: PNG bytes of :func:`bar_chart` (None: no chart).
        grid: attacked images with their predictions.
        exemplar: named images of a defense's exemplar (``attacked``, ``blank``, ``mask``).
        notes: short remarks printed at the end (e.g. skipped images).
        tables: further (title, header, rows) tables, each under its own heading after the figures
            (an empty ``header`` leaves the figures table out).
        chart_caption: what the chart shows (its alt text, and a line under it unless the default).
    """
    esc = html.escape
    out = ["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
           f"<title>{esc(title)}</title><style>{_CSS}</style></head><body><main>",
           f"<h1>{esc(title)}</h1>"]
    out += [f'<p class="facts"><b>{esc(k)}</b>: {esc(v)}</p>' for k, v in facts]
    for name, head, body in ([("Figures", header, rows)] if header else []) + list(tables):
        out.append(f"<h2>{esc(name)}</h2><table><thead><tr>" + "".join(f"<th>{esc(str(h))}</th>" for h in head)
                   + "</tr></thead><tbody>")
        for row in body:
            out.append("<tr>" + "".join(f"<td>{esc(format_value(c))}</td>" for c in row) + "</tr>")
        out.append("</tbody></table>")
    if chart is not None:
        out.append(f'<h2>Chart</h2><img class="chart" alt="{esc(chart_caption)}" src="{data_uri(chart)}">')
        if chart_caption != "bar chart of the figures":
            out.append(f'<p class="note">{esc(chart_caption)}</p>')
    if grid:
        has_after = any(item.after is not None for item in grid)
        out.append(f"<h2>Attacked images ({len(grid)} shown)</h2><div class=\"grid\">")
        for item in grid:
            final = item.after if has_after else item.before
            out.append(f'<figure class="{"wrong" if final != item.true_class else "right"}">'
                       f'<img alt="{esc(item.true_class)}" src="{data_uri(png_bytes(item.image))}">'
                       f"<figcaption>{_caption(item, has_after)}</figcaption></figure>")
        out.append("</div>")
    if exemplar:
        out.append('<h2>Exemplar</h2><div class="exemplar">')
        for name, image in exemplar.items():
            out.append(f'<figure><img alt="{esc(name)}" src="{data_uri(png_bytes(image, 320))}">'
                       f"<figcaption>{esc(name)}</figcaption></figure>")
        out.append("</div>")
    created = datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")
    out += [f'<p class="note">{esc(n)}</p>' for n in notes]
    frames = " A red frame marks a wrong final prediction." if grid else ""  # only where images are shown
    out.append(f'<p class="note">clipedit report, {esc(created)}.{frames}</p>')
    out.append("</main></body></html>")
    return "\n".join(out)


def write_report(path: str | os.PathLike, **kwargs: Any) -> Path:
    """Write :func:`render_report` (same keyword arguments) to ``path``, atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(render_report(**kwargs), encoding="utf-8")
    return Path(path)


def _caption(item: GridItem, has_after: bool) -> str:
    esc = html.escape

    def verdict(label: str, predicted: Optional[str]) -> str:
        if predicted is None:
            return ""
        ok = predicted == item.true_class
        return (f'<br>{label}: <span class="{"ok" if ok else "bad"}">{esc(predicted)} '
                f'{"&#10003;" if ok else "&#10007;"}</span>')

    text = f"true: <b>{esc(item.true_class)}</b>"
    if item.word:
        text += f'<br><span class="muted">written:</span> <span class="word">{esc(item.word)}</span>'
    text += verdict("before" if has_after else "predicted", item.before)
    if has_after:
        text += verdict("after", item.after)
    return text
