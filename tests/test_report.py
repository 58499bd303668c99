"""The HTML reports of ``audit`` and ``defend``: parsed back, every embedded image decodes, marks are right."""
from __future__ import annotations

import base64
import io
import json
from html.parser import HTMLParser
from pathlib import Path

import pytest
from conftest import run_ok
from PIL import Image
from test_benchmarks import triples_dir  # noqa: F401  (fixture)

from clipedit.eval.report import GridItem, render_report

LAYER = "visual.transformer.resblocks.1.mlp.c_proj"


class Page(HTMLParser):
    """Collects a report's images (by section), figure classes, table cells and captions."""

    def __init__(self) -> None:
        super().__init__()
        self.images: list[tuple[str, str]] = []  # (section heading, src)
        self.figures: list[str] = []
        self.cells: list[str] = []
        self.captions: list[str] = []
        self.section = ""
        self._in: list[str] = []

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "img":
            self.images.append((self.section, attrs["src"]))
        if tag == "figure":
            self.figures.append(attrs.get("class", ""))
        self._in.append(tag)

    def handle_endtag(self, tag):
        if self._in and self._in[-1] == tag:
            self._in.pop()

    def handle_data(self, data):
        if "h2" in self._in:
            self.section = data.split(" (")[0]
        if "td" in self._in:
            self.cells.append(data)
        if "figcaption" in self._in:
            self.captions.append(data)


def parse(path: Path) -> Page:
    page = Page()
    page.feed(path.read_text(encoding="utf-8"))
    return page


def decode(src: str) -> Image.Image:
    prefix = "data:image/png;base64,"
    assert src.startswith(prefix), src[:40]
    image = Image.open(io.BytesIO(base64.b64decode(src[len(prefix):], validate=True)))
    image.load()
    assert image.format == "PNG" and min(image.size) > 0
    return image


def test_audit_report_embeds_table_chart_and_marked_grid(capsys, tmp_path, triples_dir):  # noqa: F811
    out, report = tmp_path / "audit.json", tmp_path / "r.html"
    run_ok(capsys, "audit", "--model", "tiny-vit", "--dataset", f"triples:{triples_dir}", "--out", out,
           "--report", report)
    m = json.loads(out.read_text())["metrics"]
    page = parse(report)
    sections = [s for s, _ in page.images]
    assert sections.count("Chart") == 1 and sections.count("Attacked images") == m["n_attacked"] == 4
    for _, src in page.images:
        decode(src)
    wrong = m["n_attacked"] - round(m["acc1"] * m["n_attacked"])
    assert page.figures.count("wrong") == wrong and page.figures.count("right") == m["n_attacked"] - wrong
    assert f"{100 * m['clean_acc']:.1f}%" in page.cells and f"{100 * m['acc1']:.1f}%" in page.cells
    assert Image.open(out.with_suffix(".png")).format == "PNG"  # the chart, next to the JSON


@pytest.mark.slow
def test_defend_report_shows_before_after_and_exemplar(capsys, tmp_path, triples_dir):  # noqa: F811
    run_dir, report = tmp_path / "run", tmp_path / "d.html"
    stdout = run_ok(capsys, "defend", "--model", "tiny-vit", "--text", "ipod", "--renders", "3", "--rank", "2",
                    "--layer", LAYER, "--data", f"triples:{triples_dir}", "--out", run_dir, "--report", report)
    record = json.loads((run_dir / "results.json").read_text())
    m = record["metrics"]
    assert all(not isinstance(v, (dict, list)) for v in m.values())  # flat: breakdowns live beside
    assert m["after_text_acc"] == record["after"]["text_acc"] and m["text_acc"] == record["before"]["text_acc"]
    assert "by_word" in record["before"] and "predictions" not in record["before"]
    page = parse(report)
    sections = [s for s, _ in page.images]
    assert sections.count("Exemplar") == 3 and sections.count("Attacked images") == 4
    for _, src in page.images:
        decode(src)
    assert sum(c.startswith("before") for c in page.captions) == 4
    assert sum(c.startswith("after") for c in page.captions) == 4
    assert (run_dir / "results.png").is_file() and "wrote" in stdout


def test_report_escapes_names_and_marks_the_final_prediction():
    image = Image.new("RGB", (8, 8), "red")
    html = render_report(title="t<1>", facts=[("model", "a&b")], header=["", "rate"], rows=[["clean", 0.5]],
                         chart=None, grid=[GridItem(image, "<cat>", "dog", "dog", "<cat>")])
    page = Page()
    page.feed(html)
    assert "<cat>" not in html and "&lt;cat&gt;" in html and "t&lt;1&gt;" in html
    assert page.figures == ["right"]  # wrong before, right after: the frame follows the final prediction
    assert page.cells == ["clean", "50.0%"]


@pytest.mark.slow
def test_any_word_report_names_its_rendered_vocabulary_exemplars(capsys, tmp_path, triples_dir, monkeypatch):  # noqa: F811
    import copy

    from clipedit.data.prepare.vocabulary import build_vocabulary
    from clipedit.settings import defaults

    table = copy.deepcopy(defaults.defaults_table())  # '*' small: 6 exemplar words x 2 renders, rank 2
    table["edit-any-word"] = {"default": defaults.AnyWordDefaults(words=6, renders=2, rank=2, mask="text", sites=None,
                                                                  keep_reading=0.0, class_token="off"),
                              "families": {}, "models": {}}
    monkeypatch.setattr(defaults, "defaults_table", lambda: table)
    words = tmp_path / "words.txt"
    words.write_text("\n".join("apple ball car mug clock key star house tree fish umbrella ipod zebra".split()))
    report = tmp_path / "any.html"
    run_ok(capsys, "defend", "--model", "tiny-vit", "--text", "*", "--vocab", words, "--layer", LAYER,
           "--data", f"triples:{triples_dir}", "--out", tmp_path / "run", "--report", report)
    vocabulary = build_vocabulary((), n_words=6, words_file=words)
    text = report.read_text()
    n = len(vocabulary.exemplar_words)
    assert f"{2 * n} rendered: {n} vocabulary words ({words}) x 2 renders" in text
    assert "one real photo pair" not in text and "<b>n</b>: n = " in text
    page = parse(report)
    assert [s for s, _ in page.images].count("Exemplar") == 3
    assert any(c.startswith(f"exemplar ({vocabulary.exemplar_words[0]}, 1 of {2 * n})") for c in page.captions)


def test_chart_draws_attack_success_in_its_own_colour_and_says_lower_is_better():
    from clipedit.eval.report import LOWER_IS_BETTER_COLOURS, SERIES_COLOURS, bar_chart, lower_is_better

    def colours(png: bytes) -> set[tuple[int, int, int]]:
        return {c[:3] for _, c in Image.open(io.BytesIO(png)).convert("RGB").getcolors(1 << 20)}

    def rgb(hex_colour: str) -> tuple[int, int, int]:
        return tuple(int(hex_colour[i:i + 2], 16) for i in (1, 3, 5))

    rows = [["clean", 0.9, 3], ["text note", 0.3, 3], ["attack success", 0.6, 3]]
    drawn = colours(bar_chart(rows, ["rate"]))
    assert rgb(LOWER_IS_BETTER_COLOURS[1]) in drawn and rgb(SERIES_COLOURS[1]) in drawn
    assert rgb(LOWER_IS_BETTER_COLOURS[1]) not in colours(bar_chart(rows[:2], ["rate"]))
    both = colours(bar_chart([["clean", 0.9, 0.9], ["attack success (defended words)", 0.6, 0.1]], ["before", "after"]))
    assert {rgb(c) for c in LOWER_IS_BETTER_COLOURS + SERIES_COLOURS} <= both
    assert lower_is_better("attack success (other words)") and not lower_is_better("text note (other words)")


def test_undefined_figures_are_written_n_a_in_charts_and_the_footer_speaks_only_of_shown_images(monkeypatch):
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

    from clipedit.eval.report import bar_chart

    written, titles = [], []
    real_text, real_title = Axes.text, Figure.suptitle
    monkeypatch.setattr(Axes, "text",
                        lambda self, x, y, s, *a, **k: written.append(s) or real_text(self, x, y, s, *a, **k))
    monkeypatch.setattr(Figure, "suptitle", lambda self, t, *a, **k: titles.append(t) or real_title(self, t, *a, **k))
    bar_chart([["clean", 0.5, 10], ["attack success", None, 0]], ["rate"], title="m on photos: " + "word, " * 30)
    assert written == ["50.0%", "n/a"]
    assert all(len(line) <= 100 for line in titles[0].splitlines())  # wrapped, not cut at the edge
    page = render_report(title="t", facts=[], header=["", "rate"], rows=[["clean", 0.5]], chart=None, grid=[])
    assert "red frame" not in page
