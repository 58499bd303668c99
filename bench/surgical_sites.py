"""Where a rewrite can remove the attack and keep reading: sites x rank x keep set x keep_reading β, each scored on
the VALIDATION split by the sweep's scorer (defended-word and other-word notes, clean, blank, reading kept; n and
95% Wilson interval each), and the default each model gets from the declared rule (bench/results/surgical_sites.json).

    python -m bench surgical_sites --model mini-vit-deep [--n 100] [--betas 0,1,3] [--update-results]
    python -m bench surgical_sites --model mini --update-results
    python -m bench surgical_sites --model mini --part target [--n 100] --update-results
    python -m bench surgical_sites --tables [--write-docs]   # docs/results.md's tables, from the result file

``--part target`` (after the search): the model's picked setting for the word and, for '*', the model's
any-word defaults with the picked β, defended on a copy and scored on the TEST split's leave-out factors
(notes + stickers; the defended word's and other words' sets, blank, clean, reading), each figure with n and a
95% Wilson interval, against the issue's targets (:data:`TARGETS`, verdicts computed here).

Each run measures one model and writes its entry into the result file (the other models' entries stay). The
candidates of each model are data (:data:`PLANS`): groups of (sites, ranks, multi-site sets, keep_targets), each
swept at every β of ``--betas`` (``keep_reading``: signs in exemplar styles kept as they are in the closed form).

The rule (:data:`clipedit.selection.sweep.SweepSettings`' defaults, ``sweep``'s pick): among candidates whose clean
and blank-note accuracy each lose at most 0.5 point (one scene at n = 100) and whose reading kept loses at most
5 points against the unedited model, the largest defended-word text-note accuracy; ties: unseen words.

Negative results are kept: every candidate's figures are recorded, admissible or not.
"""
from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import logging
import time
from pathlib import Path
from typing import Any

from bench.measure import RESULTS, out_options, result_path
from clipedit import load_model
from clipedit.core.edit_sets import revert_edit_set
from clipedit.defenses.typographic import defend
from clipedit.eval.intervals import wilson
from clipedit.eval.pick import admissible, gains, heldout_data, pick, scene_tolerance, score
from clipedit.io import write_json
from clipedit.selection.sweep import SweepSettings, sweep, with_intervals
from clipedit.settings.resolve import resolve_config

log = logging.getLogger(__name__)

VIT = "visual.transformer.resblocks.{}."


def _vit_sites(blocks) -> list[str]:
    return [VIT.format(b) + part for b in blocks for part in ("attn.v_proj", "mlp.c_proj")]


#: model -> groups of candidates: name, single sites (each at ``ranks``), multi-site sets (each at ``set_ranks``),
#: keep_targets (None: the model's default). The ResNet's attention pool is not a site: AttentionPool2d passes its
#: projections' weights to F.multi_head_attention_forward and assembles their input (mean token, positional
#: embedding) inside its forward, so no forward hook sees a key (sites.py refuses it).
PLANS: dict[str, list[dict[str, Any]]] = {
    "mini-vit-deep": [
        {"group": "later sites (blocks 1-4), rank 32", "sites": _vit_sites(range(1, 5)), "ranks": [32]},
        {"group": "default block-0 pair, rank 32-128, keep clean+blank (3)",
         "sets": [[VIT.format(0) + "attn.v_proj", VIT.format(0) + "mlp.c_proj"]], "set_ranks": [32, 64, 128],
         "keep_targets": 3.0},
        {"group": "reading blocks' values (1-3), rank 32", "sets": [[VIT.format(b) + "attn.v_proj" for b in (1, 2, 3)]],
         "set_ranks": [32]},
        {"group": "MLP outputs of blocks 0-2, each its own block's target, rank 32",
         "sets": [[VIT.format(b) + "mlp.c_proj" for b in (0, 1, 2)]], "set_ranks": [32]},
        {"group": "MLP outputs of blocks 0-2, one target spread (MEMIT), rank 32",
         "sets": [[VIT.format(b) + "mlp.c_proj" for b in (0, 1, 2)]], "set_ranks": [32], "spread": True},
        {"group": "class token alone, MLP outputs of blocks 2-4, rank 32",
         "sites": [VIT.format(b) + "mlp.c_proj" for b in (2, 3, 4)], "ranks": [32], "class_token": "only"},
        {"group": "class token alone, block 3's MLP output, rank 64-128",
         "sites": [VIT.format(3) + "mlp.c_proj"], "ranks": [64, 128], "class_token": "only"},
    ],
    "mini-vit": [
        {"group": "later sites (blocks 1-3), rank 32", "sites": _vit_sites(range(1, 4)), "ranks": [32]},
        {"group": "default four sites, rank 32-64, keep clean+blank (3)",
         "sets": [[VIT.format(b) + "attn.v_proj" for b in (0, 1, 2)] + [VIT.format(0) + "mlp.c_proj"]],
         "set_ranks": [32, 64], "keep_targets": 3.0},
        {"group": "block 0 sites alone, rank 32", "sites": _vit_sites([0]), "ranks": [32]},
        {"group": "class token alone, MLP outputs of blocks 1-3, rank 32",
         "sites": [VIT.format(b) + "mlp.c_proj" for b in (1, 2, 3)], "ranks": [32], "class_token": "only"},
    ],
    "mini": [
        {"group": "layer3 / layer4 conv3, rank 32", "sites": ["visual.layer3.0.conv3", "visual.layer4.0.conv3"],
         "ranks": [32], "keep_targets": 0.0},
        {"group": "layer3 conv3, rank 64-128, keep clean+blank (3)", "sites": ["visual.layer3.0.conv3"],
         "ranks": [64, 128], "keep_targets": 3.0},
        {"group": "layer3+layer4 conv3, rank 32", "sets": [["visual.layer3.0.conv3", "visual.layer4.0.conv3"]],
         "set_ranks": [32], "keep_targets": 0.0},
    ],
}


#: The issue's targets, in points: notes + stickers within 5 of the unedited blank note (defended and unseen
#: words), reading within 5 of the unedited model's, clean and blank-note loss at most 0.5.
TARGETS = {"notes_gap": 5.0, "reading_gap": 5.0, "loss": 0.5}
HEADLINE = "notes + stickers"


def add_arguments(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("--model", default="mini-vit-deep", choices=sorted(PLANS))
    ap.add_argument("--word", default="ipod")
    ap.add_argument("--n", type=int, default=100, help="validation scenes per set and signs")
    ap.add_argument("--betas", default="0,1,3", help="keep_reading values (comma-separated)")
    ap.add_argument("--groups", default=None, help="only these group indices (comma-separated)")
    ap.add_argument("--part", default="search", choices=["search", "star", "target"])
    ap.add_argument("--star-groups", default=None, help="with --part star: only these '|'-separated plans")
    ap.add_argument("--tables", action="store_true", help="print the markdown tables of the result file")
    ap.add_argument("--write-docs", action="store_true", help="with --tables: write them into docs/results.md")
    out_options(ap)


def measure(model: str, word: str, n: int, betas: list[float], groups: list[int] | None = None) -> dict[str, Any]:
    """Every candidate of ``PLANS[model]`` at every β, scored on one validation set; the rule's pick."""
    bundle = load_model(model)
    data = heldout_data(bundle, [word], n, n)
    rows, baseline, seconds = [], None, {}
    for gi, group in enumerate(PLANS[model]):
        if groups is not None and gi not in groups:
            continue
        for beta in betas:
            overrides: dict[str, Any] = {"keep_reading": beta}
            if group.get("keep_targets") is not None:
                overrides["keep_targets"] = group["keep_targets"]
            if group.get("spread"):
                overrides["spread"] = True
            if group.get("class_token"):
                overrides["class_token"] = group["class_token"]
            config = resolve_config(bundle, overrides)
            swept = []
            if group.get("sites"):
                swept.append(SweepSettings(sites=group["sites"], ranks=group["ranks"], site_sets=(), n_val=n,
                                           n_signs=n, reading_tolerance=None))
            if group.get("sets"):
                swept.append(SweepSettings(sites=[], ranks=group["set_ranks"], site_sets=group["sets"], n_val=n,
                                           n_signs=n, reading_tolerance=None))
            for s in swept:
                clock = time.perf_counter()
                result = sweep(bundle, [word], s, config, data=data)
                seconds[f"{gi}/{beta}/{len(seconds)}"] = round(time.perf_counter() - clock, 1)
                baseline = result.baseline
                for row in result.rows:
                    rows.append({**row, "group": group["group"], "keep_reading": beta,
                                 "keep_targets": config.hparams.keep_targets, "spread": config.hparams.spread,
                                 "class_token": config.hparams.class_token,
                                 "mask": config.mask, "renders": config.renders})
                log.info("%s group %d beta %g: %d candidates", model, gi, beta, len(result.rows))
    return {"model": model, "word": word, "split": "validation", "n": n, "betas": betas, "baseline": baseline,
            "rows": rows, "seconds": seconds}


#: '*' candidates per model besides its any-word defaults (each a group of overrides on top of them).
STAR_PLANS: dict[str, dict[str, dict[str, Any]]] = {
    "mini-vit-deep": {"'*' at block 3's class token (mlp.c_proj), rank 64":
                      {"layer": VIT.format(3) + "mlp.c_proj", "rank": 64, "class_token": "only"}},
    "mini-vit": {"'*' at block 2's class token (mlp.c_proj), rank 32":
                 {"layer": VIT.format(2) + "mlp.c_proj", "rank": 32, "class_token": "only"}},
}
STAR_DEFAULT = "'*' (any-word defaults)"


def measure_star(model: str, word: str, n: int, betas: list[float], groups: list[str] | None = None
                 ) -> dict[str, Any]:
    """'*' (the model's any-word defaults, and :data:`STAR_PLANS`' variants) at each β, applied to the model,
    scored on the validation split as the search's rows are, and taken off again (the sweep does not take '*');
    returns the entry with the rule's pick among them (``groups``: only these plan names)."""
    bundle = load_model(model)
    data = heldout_data(bundle, [word], n, n)  # shares bundle.model: scores the model as it is when called
    baseline = with_intervals(score(data))
    plans = {STAR_DEFAULT: {}, **STAR_PLANS.get(model, {})}
    rows = []
    for group, extra in plans.items():
        if groups is not None and group not in groups:
            continue
        for beta in betas:
            clock = time.perf_counter()
            result = defend(bundle, "*", {**extra, "keep_reading": beta})
            seconds = time.perf_counter() - clock
            try:
                row = {"method": "edit", "site": result.layer, "sites": result.layer.split("+"),
                       "rank": result.config["hparams"]["rank"], "seconds": round(seconds, 1),
                       **with_intervals(score(data))}
            finally:
                revert_edit_set(bundle.model, result.edit_set)
            row.update(gains(row, baseline))
            hp = result.config["hparams"]
            rows.append({**row, "group": group, "keep_reading": beta, "keep_targets": hp["keep_targets"],
                         "spread": hp.get("spread", False), "class_token": hp.get("class_token", "off"),
                         "mask": result.config["mask"], "renders": result.config["renders"]})
            log.info("%s %s beta %g: %s", model, group, beta,
                     {k: row[k] for k in ("text_acc", "other_text_acc", "reading_acc")})
    return {"word": "*", "scored_word": word, "n": n, "split": "validation", "baseline": baseline, "rows": rows}


def choose(entry: dict[str, Any]) -> dict[str, Any]:
    """``entry`` with the rule (SweepSettings' defaults) applied to its rows: each row's ``rule_admissible``, the
    rule as text and data, and ``picked`` (None: no row meets it)."""
    settings, rows, baseline = SweepSettings(), entry["rows"], entry["baseline"]
    tol = scene_tolerance(settings.tolerance, int(baseline["intervals"]["text_acc"]["n"]), "pick tolerance")
    reading = scene_tolerance(settings.reading_tolerance, int(baseline["intervals"]["reading_acc"]["n"]),
                              "reading tolerance")
    best = pick(rows, baseline, tol, reading)
    for row in rows:
        row["rule_admissible"] = admissible(row, baseline, tol, reading)
    rule = {"text": (f"largest defended-word text-note accuracy with clean and blank-note loss <= {tol.text()} and "
                     f"reading-kept loss <= {reading.text()}; ties: unseen words"),
            "tolerance": tol.to_dict(), "reading_tolerance": reading.to_dict()}
    return {**entry, "rule": rule, "picked": rows[best] if best is not None else None}


def _proportion(acc: float, n: int) -> dict[str, Any]:
    hits = int(round(acc * n))
    return {"acc": hits / n, "n": n, "ci95": list(wilson(hits, n))}


def figures(result: dict[str, Any]) -> dict[str, Any]:
    """The target's figures of one scored state: notes + stickers (defended word, other words), blank and clean
    on the defended word's notes + stickers scenes, reading kept (signs); each a proportion with n and CI."""
    ed, ot = result["strata"][HEADLINE], result["other_strata"][HEADLINE]
    return {"word_notes": ed["text_acc"], "other_notes": ot["text_acc"], "blank": ed["blank_acc"],
            "clean": ed["clean_acc"], "reading": _proportion(result["reading_acc"], int(result["reading_n"]))}


def verdicts(row: dict[str, Any], unedited: dict[str, Any]) -> dict[str, Any]:
    """Each target met or missed, and by how much (points; positive: missed by that much)."""
    pt = lambda d: 100 * d["acc"]  # noqa: E731
    out = {}
    for key in ("word_notes", "other_notes"):
        short = pt(unedited["blank"]) - pt(row[key]) - TARGETS["notes_gap"]
        out[key] = {"gap_to_unedited_blank": round(pt(unedited["blank"]) - pt(row[key]), 1),
                    "met": short <= 1e-9, "missed_by": round(max(short, 0.0), 1)}
    short = pt(unedited["reading"]) - pt(row["reading"]) - TARGETS["reading_gap"]
    out["reading"] = {"loss": round(pt(unedited["reading"]) - pt(row["reading"]), 1), "met": short <= 1e-9,
                      "missed_by": round(max(short, 0.0), 1)}
    for key in ("clean", "blank"):
        short = pt(unedited[key]) - pt(row[key]) - TARGETS["loss"]
        out[key] = {"loss": round(pt(unedited[key]) - pt(row[key]), 1), "met": short <= 1e-9,
                    "missed_by": round(max(short, 0.0), 1)}
    return out


def overrides_of(row: dict[str, Any]) -> dict[str, Any]:
    """The ``defend`` overrides that rebuild a search row's setting (every setting the search varies)."""
    return {"layer": list(row["sites"]), "rank": row["rank"], "keep_targets": row["keep_targets"],
            "keep_reading": row["keep_reading"], "mask": row["mask"], "spread": bool(row.get("spread")),
            "class_token": row.get("class_token", "off")}


def star_overrides_of(row: dict[str, Any]) -> dict[str, Any]:
    """The overrides on the any-word defaults that rebuild a '*' row (its plan's, and β)."""
    plan = {g: v for plans in STAR_PLANS.values() for g, v in plans.items()}.get(row.get("group"), {})
    return {**plan, "keep_reading": row["keep_reading"]}


def target(model: str, word: str, n: int, picked: dict[str, Any] | None, star_overrides: dict[str, Any]
           ) -> dict[str, Any]:
    """The picked setting (``picked``: a search row; None: the model's defaults) for ``word`` and the '*' setting
    the rule picked on validation (``star_overrides`` on the any-word defaults), each on a copy of the model,
    scored on the test split."""
    bundle = load_model(model)
    chosen = overrides_of(picked) if picked is not None else {}
    star = star_overrides
    unedited = figures(score(heldout_data(bundle, [word], n, n, split="test")))
    out: dict[str, Any] = {"model": model, "split": "test", "n": n, "chosen": chosen, "targets": TARGETS,
                           "unedited": unedited, "defended": {}}
    for words, overrides in ((word, chosen), ("*", star)):
        copy_ = dataclasses.replace(bundle, model=copy.deepcopy(bundle.model))
        clock = time.perf_counter()
        result = defend(copy_, words, dict(overrides))
        seconds = time.perf_counter() - clock
        row = figures(score(heldout_data(copy_, [word], n, n, split="test")))
        out["defended"][words] = {"settings": overrides, "config": result.config, "seconds": round(seconds, 1), **row,
            "verdicts": verdicts(row, unedited)}
        log.info("%s %s: %s", model, words, {k: v["acc"] for k, v in row.items()})
    return out


def _cell(p: dict[str, Any] | None) -> str:
    """``86.0% [77.9, 91.5]`` from a proportion (``acc``, ``ci95`` or ``ci``)."""
    if not p or p.get("acc") is None:
        return "-"
    lo, hi = p.get("ci95") or p.get("ci")
    return f"{100 * p['acc']:.1f}% [{100 * lo:.1f}, {100 * hi:.1f}]"


def _site_text(sites: list[str]) -> str:
    short = [s.removeprefix("visual.").replace("transformer.resblocks.", "b") for s in sites]
    return " + ".join(f"`{s}`" for s in short)


def _row_cells(r: dict[str, Any]) -> list[str]:
    iv = r["intervals"]
    return [_cell(iv.get(k)) for k in ("text_acc", "other_text_acc", "blank_acc", "clean_acc", "reading_acc")]


def tables(record: dict[str, Any]) -> str:
    """The markdown of docs/results.md's surgical-rewrite tables, from the result file (every candidate; the pick;
    the test split's targets)."""
    out = []
    for model, e in record["models"].items():
        b, n = e["baseline"], e["n"]
        out.append(f"**{model}**, validation split, word \"{e['word']}\", n = {b['intervals']['text_acc']['n']} "
                   f"scenes a set (other words: {b['intervals']['other_text_acc']['n']}), "
                   f"{b['intervals']['reading_acc']['n']} signs; 95% Wilson intervals.\n")
        head = ["group", "site(s)", "rank", "keep blank", "β (signs)", "\"" + e["word"] + "\" notes", "other words",
                "blank", "clean", "reading", "rule"]
        rows = [["unedited", "-", "-", "-", "-", *_row_cells(b), ""]]
        for r in e["rows"]:
            where = (" (spread)" if r.get("spread") else "") + (f" (class token: {r['class_token']})"
                                                                 if r.get("class_token", "off") != "off" else "")
            rows.append([r["group"], _site_text(r["sites"]) + where, str(r["rank"]),
                         f"{r['keep_targets']:g}", f"{r['keep_reading']:g}", *_row_cells(r),
                         "pick" if r is e.get("picked") or r == e.get("picked") else
                         "meets" if r.get("rule_admissible") else ""])
        out.append("| " + " | ".join(head) + " |\n|" + "---|" * len(head))
        out.extend("| " + " | ".join(row) + " |" for row in rows)
        p = e.get("picked")
        out.append(f"\nRule: {e['rule']['text']}. Pick: " + (
            f"{_site_text(p['sites'])}, rank {p['rank']}, keep blank {p['keep_targets']:g}, β {p['keep_reading']:g}."
            if p else "none meets it.") + f" (n = {n}.)\n")
        st = e.get("star")
        if st:
            sb = st["baseline"]
            out.append("'*' (the any-word defaults of defaults.json, β the only change), the same validation sets:\n")
            sh = ["setting", "β (signs)", "\"" + e["word"] + "\" notes", "other words", "blank", "clean", "reading",
                  "rule"]
            out.append("| " + " | ".join(sh) + " |\n|" + "---|" * len(sh))
            out.append("| unedited | - | " + " | ".join(_row_cells(sb)) + " | |")
            for r in st["rows"]:
                cls = f" (class token: {r['class_token']})" if r.get("class_token", "off") != "off" else ""
                out.append(f"| `*` at {_site_text(r['sites'])}{cls}, rank {r['rank']} | {r['keep_reading']:g} | "
                           + " | ".join(_row_cells(r)) + " | "
                           + ("pick" if r == st.get("picked") else "meets" if r.get("rule_admissible") else "") + " |")
            out.append("")
        t = e.get("target")
        if t:
            out.append(f"Test split's leave-out factors, notes + stickers, n = {t['n']} scenes a set drawn "
                       f"({t['unedited']['word_notes']['n']} \"{e['word']}\" and {t['unedited']['other_notes']['n']} "
                       f"other-word notes + stickers), {t['unedited']['reading']['n']} signs:\n")
            th = ["setting", f"\"{e['word']}\" notes+stickers", "other words", "blank", "clean", "reading",
                  "targets missed, by (points)"]
            out.append("| " + " | ".join(th) + " |\n|" + "---|" * len(th))
            keys = ("word_notes", "other_notes", "blank", "clean", "reading")
            out.append("| unedited | " + " | ".join(_cell(t["unedited"][k]) for k in keys) + " | |")
            for words, d in t["defended"].items():
                missed = [f"{VERDICT_NAMES[k].format(word=e['word'])} by {v['missed_by']:.1f}"
                          for k, v in d["verdicts"].items() if not v["met"]]
                out.append(f"| defend `{words}` | " + " | ".join(_cell(d[k]) for k in keys) + " | "
                           + (", ".join(missed) or "none") + " |")
            out.append("")
    return "\n".join(out).rstrip() + "\n"


VERDICT_NAMES = {"word_notes": "\"{word}\" notes", "other_notes": "other words", "reading": "reading",
                 "clean": "clean loss", "blank": "blank loss"}
DOCS = Path(__file__).resolve().parents[1] / "docs" / "results.md"
BEGIN, END = "<!-- surgical_sites --tables -->", "<!-- /surgical_sites --tables -->"


def docs_with_tables(text: str, generated: str) -> str:
    """``text`` (docs/results.md) with the part between the markers replaced by ``generated``."""
    if BEGIN not in text or END not in text:
        raise SystemExit(f"Error: {DOCS} has no {BEGIN} ... {END} section")
    head, rest = text.split(BEGIN, 1)
    return head + BEGIN + "\n" + generated + rest[rest.index(END):]


def main(args: argparse.Namespace) -> None:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    path = result_path(args.out, "surgical_sites")
    if args.tables:
        generated = tables(json.loads(result_path(args.out, "surgical_sites").read_text() if args.out else
                                      (RESULTS / "surgical_sites.json").read_text()))
        if args.write_docs:
            DOCS.write_text(docs_with_tables(DOCS.read_text(), generated))
        print(generated)
        return
    if args.part == "star":
        record = json.loads(path.read_text()) if path.exists() else {"models": {}}
        if args.model not in record["models"]:
            raise SystemExit(f"Error: no search entry for {args.model} in {path}; run the search first")
        only = [g for g in args.star_groups.split("|")] if args.star_groups else None
        star = measure_star(args.model, args.word, args.n, [float(b) for b in args.betas.split(",")], only)
        record = json.loads(path.read_text())  # re-read: another model's run may have written meanwhile
        old = record["models"][args.model].get("star") or {}
        if only is not None and old:  # the other plans' rows stay
            star["rows"] = [r for r in old["rows"] if r.get("group", STAR_DEFAULT) not in only] + star["rows"]
        record["models"][args.model]["star"] = choose(star)
        write_json(path, record)
        print(tables({"models": {args.model: {**record["models"][args.model], "target": None}}}))
        return
    if args.part == "target":
        record = json.loads(path.read_text()) if path.exists() else {"models": {}}
        entry = record["models"].get(args.model)
        if entry is None:
            raise SystemExit(f"Error: no search entry for {args.model} in {path}; run the search first")
        star = (entry.get("star") or {}).get("picked")
        if star is None:
            raise SystemExit(f"Error: no '*' pick for {args.model} in {path}; run --part star first")
        done = target(args.model, args.word, args.n, entry["picked"], star_overrides_of(star))
        record = json.loads(path.read_text())  # re-read: another model's run may have written meanwhile
        entry = record["models"][args.model]
        entry["target"] = done
        write_json(path, record)
        print(json.dumps(entry["target"]["defended"], indent=1)[:4000])
        print(f"wrote {path}")
        return
    betas = [float(b) for b in args.betas.split(",")]
    groups = [int(g) for g in args.groups.split(",")] if args.groups else None
    entry = measure(args.model, args.word, args.n, betas, groups)
    record = json.loads(path.read_text()) if path.exists() else {"models": {}}
    old = record["models"].get(args.model, {})
    if groups is not None and old.get("n") == args.n and old.get("word") == args.word:  # other groups' rows stay
        measured = {(row["group"], row["keep_reading"]) for row in entry["rows"]}
        entry["rows"] = [r for r in old.get("rows", []) if (r["group"], r["keep_reading"]) not in measured] \
            + entry["rows"]
        entry["betas"] = sorted({*old.get("betas", []), *entry["betas"]})
        entry["seconds"] = {**old.get("seconds", {}), **entry["seconds"]}
    entry = choose(entry)
    entry["star"], entry["target"] = old.get("star"), old.get("target")  # a later search keeps the other parts
    record["models"][args.model] = entry
    write_json(path, record)
    base = entry["baseline"]
    print(f"{args.model} unedited: notes {base['text_acc']:.3f} other {base['other_text_acc']:.3f} "
          f"blank {base['blank_acc']:.3f} reading {base['reading_acc']:.3f}")
    for r in entry["rows"]:
        print(f"{r['site']:<70} r{r['rank']:<4} kt{r['keep_targets']:g} b{r['keep_reading']:g}"
              f"{' spread' if r.get('spread') else ''} {r.get('class_token', 'off')}: notes "
              f"{r['text_acc']:.3f} other {r['other_text_acc']:.3f} clean {r['clean_acc']:.3f} blank "
              f"{r['blank_acc']:.3f} reading {r['reading_acc']:.3f}{' *' if r['rule_admissible'] else ''}")
    picked = entry["picked"]
    print("picked:", None if picked is None else (picked["site"], picked["rank"], picked["keep_targets"],
                                                  picked["keep_reading"]))
    print(f"wrote {path}")


if __name__ == "__main__":
    from bench.harness import script

    script(__file__)

