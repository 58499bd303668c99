"""The files of a defense run, written by one function for the CLI and Python alike:

    defense = clipedit.defend(bundle, "ipod", evaluate=clipedit.EvalOptions(n=200))
    clipedit.save_run("runs/ipod", bundle, defense, report="runs/ipod.html")

``OUT/`` gets ``model.safetensors`` (the edited weights, unless the edit needs clipedit's hooks: then load
the base with ``--edit edit.safetensors``; a Hugging Face model: its ``save_pretrained`` folder),
``edit.safetensors`` (the edit set), ``results.json`` (the record) and ``results.png`` (its chart) as one
set: all or none, two runs on one folder leave one run's whole set. The HTML report is written after.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, Optional, Union

from clipedit.core import LayerEdit, save_edits
from clipedit.defenses.typographic import text_exemplars
from clipedit.eval.report import bar_chart, evaluation_grid, exemplars_fact, write_chart, write_report
from clipedit.eval.results import rate_with_interval, undefined_reasons, write_results
from clipedit.io import atomic_output_set
from clipedit.methods.spec import DefenseResult
from clipedit.models.bundle import ModelBundle
from clipedit.models.checkpoint import save_model_weights, stored_dtypes
from clipedit.outputs import OutputSet, check_outputs
from clipedit.settings.config import DefenseConfig

log = logging.getLogger(__name__)

#: The files of a run's folder (each written or, when the run has none, an older run's removed).
OUTPUT_SET = ("model.safetensors", "edit.safetensors", "results.json", "results.png")
#: What a Hugging Face model's export adds to the folder (``save_pretrained`` of the model, its image
#: processor and tokenizer): no other output of the run may be written under these names there.
EXPORT_FILES = ("config.json", "generation_config.json", "preprocessor_config.json", "tokenizer.json",
                "tokenizer_config.json", "special_tokens_map.json", "vocab.json", "merges.txt",
                "added_tokens.json", "spiece.model")
PathLike = Union[str, os.PathLike]


def run_outputs(out: PathLike, report: Optional[PathLike] = None) -> dict[str, Any]:
    """The outputs of a run for :func:`~clipedit.outputs.check_outputs` (the CLI's labels)."""
    return {"--out": OutputSet(out, OUTPUT_SET + EXPORT_FILES), "--report": report}


def save_run(out: PathLike, bundle: ModelBundle, defense: DefenseResult, report: Optional[PathLike] = None,
             selection: Optional[dict] = None, config: Optional[DefenseConfig] = None,
             exemplar_images: Optional[dict] = None) -> list[Path]:
    """Write a defense run's files into folder ``out`` (one set) and, with ``report``, its HTML report.

    Args:
        out: the run's folder (its files are replaced as one set; other files in it stay).
        bundle: the defended model (its current, edited weights are written); defense: ``defend``'s result.
        report: an HTML report (table, chart, images before/after, the exemplar) to write too.
        selection: what ``--layer/--rank auto`` chose, and by which rule (recorded).
        config: the resolved configuration (the report re-renders the first exemplar of ``'*'`` with it).
        exemplar_images: the real exemplar pair to show in the report (``exemplar``, ``blank``, ``mask``).

    Returns:
        the files written.
    """
    check_outputs(run_outputs(out, report))
    out = Path(out)
    record = defense.to_record(bundle, **({"selection": selection} if selection is not None else {}))
    meta = {"model": bundle.name, "source": bundle.source, "method": defense.method, "layer": defense.layer,
            "words": defense.words}
    for member in defense.edit_set.edits if defense.edit_set is not None else []:
        dtypes = stored_dtypes(bundle, [member.layer]) if isinstance(member, LayerEdit) else None
        if dtypes:  # an edited layer kept wider than its fp16/bf16 source says so
            member.meta["stored_dtypes"] = dtypes
    with atomic_output_set(out, replaces=OUTPUT_SET) as stage:
        if defense.edit_set is None or defense.edit_set.exportable:  # hook members live only in the edit file
            save_model_weights(stage / "model.safetensors", bundle, metadata=meta)
        if defense.edit_set is not None:  # one file, applied and reverted as one
            save_edits(stage / "edit.safetensors", defense.edit_set)
        write_results(stage / "results.json", record)
        if defense.figures:
            write_chart(stage / "results.png", defense.rows(), ["before", "after"],
                        f"{bundle.name}: {defense.method} against {', '.join(defense.words)} "
                        f"({n_text(defense.figures['before'])})")
    written = [out / name for name in OUTPUT_SET if (out / name).is_file()]
    if report is not None:
        _write_report(report, bundle, defense, config, exemplar_images)
        written.append(Path(report))
    return written


def _write_report(path: PathLike, bundle: ModelBundle, defense: DefenseResult, config: Optional[DefenseConfig],
                  exemplar_images: Optional[dict]) -> None:
    """The HTML report: before/after table and chart, the defended words' images, the exemplars used."""
    vocabulary = defense.vocabulary
    if exemplar_images is not None:
        shown, fact = exemplar_images, exemplars_fact(photo_pair=True)
    elif vocabulary is not None:  # '*': rendered batch by batch and not kept; the first one again, as it was
        renders = (config.renders if config is not None else defense.config.get("renders")) or 0
        seed = config.seed if config is not None else defense.config.get("seed", 0)
        first = text_exemplars(bundle, vocabulary.exemplar_words[0], 1, seed,
                               config.photos if config is not None else None)[0]
        shown = {f"exemplar ({first.text}, 1 of {len(vocabulary.exemplar_words) * renders})": first.attacked,
                 "blank": first.blank, "mask": first.text_mask}
        fact = exemplars_fact(words=vocabulary.exemplar_words, renders=renders, vocabulary=vocabulary.source,
                              heldout_words=len(vocabulary.heldout_words))
    elif defense.exemplars:
        first = defense.exemplars[0]
        shown = {f"exemplar ({first.text})": first.attacked, "blank": first.blank, "mask": first.text_mask}
        fact = exemplars_fact(words=defense.words, renders=len(defense.exemplars) // max(len(defense.words), 1))
    else:
        shown, fact = None, "not kept"
    fig, rows = defense.figures, defense.rows()
    shown_rows = [[label, rate_with_interval(b, n), rate_with_interval(a, n), n] for label, b, a, n in rows]
    write_report(path, title=f"Typographic defense: {bundle.name} ({bundle.pretrained})",
                 facts=[("defense", f"{defense.method} of {defense.layer} against {', '.join(defense.words)}"),
                        ("evaluated on", fig["dataset"] if fig else "nothing (--no-eval)"),
                        ("n", n_text(fig["before"]) if fig else "-"), ("exemplars", fact)],
                 header=["", "before [95% interval]", "after [95% interval]", "n"], rows=shown_rows,
                 notes=undefined_reasons(rows),
                 chart=bar_chart(rows, ["before", "after"]) if rows else None,
                 grid=evaluation_grid(fig["sets"], fig["before"]["predictions"], fig["after"]["predictions"])
                 if fig else [], exemplar=shown)


def n_text(before: dict) -> str:
    """How many images the figures are over: scenes per set (held-out sets) or the benchmark's images."""
    if before.get("n_other"):
        return f"n = {before['n']} scenes with the defended words, {before['n_other']} with other words"
    return f"n = {before['n']} images"
