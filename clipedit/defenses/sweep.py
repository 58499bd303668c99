"""Sweep the rewrite over sites x ranks, scored on the validation split, and pick a setting.

    result = sweep(bundle, ["ipod"])            # every candidate site of the image tower x ranks
    result.picked                               # the row the pick rule chose (or None)

Pick rule (:mod:`clipedit.defenses.selection`): among settings whose clean and blank-note accuracy
each lose at most 0.5 point against the unedited model on the validation split, the largest gain in
text-note accuracy on the defended word(s); ties go to the larger gain on unseen words, then to the
earlier row (sites in forward order, ranks ascending). ``defend --layer auto`` / ``--rank auto`` use it.

Cost: the exemplars' keys and values for every site come from one traced pass of the attacked and one
of the blank exemplars; each site's key statistics are computed once (and cached on disk); each site's
edit directions are computed once at the largest rank and cut to each smaller rank (the top-r
directions are the first r of them), leaving one least-squares solve per candidate. Candidates are
applied, scored and reverted on the caller's model, which ends unchanged. Closed-form solver only.
"""
from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Optional

import torch
from tqdm.auto import tqdm

from clipedit.core import LayerEdit, apply_edit, resolve_site
from clipedit.core.edits import edited_digest, revert_edit, tensor_digest
from clipedit.core.keys_values import collect_exemplars_at
from clipedit.core.sites import candidate_sites
from clipedit.core.solvers import solve_closed_form
from clipedit.core.subspace import edit_directions, regularise
from clipedit.defenses.edit_requests import request_from_attacks
from clipedit.defenses.selection import (
    PICK_TOLERANCE,
    HeldoutData,
    admissible,
    effective_tolerance,
    gains,
    heldout_data,
    pick,
    score,
    tolerance_in_scenes,
    tolerance_text,
)
from clipedit.defenses.typographic import DefenseConfig, reference_statistics, text_exemplars
from clipedit.errors import ClipeditError, SiteError
from clipedit.models.bundle import ModelBundle

log = logging.getLogger(__name__)

DEFAULT_RANKS: tuple[int, ...] = (1, 4, 16, 32, 64)
SCORED = ("text_acc", "other_text_acc", "clean_acc", "blank_acc", "reading_acc", "attack_success_rate")


@dataclass
class SweepSettings:
    """What a sweep tries and how it scores.

    Attributes:
        sites: dotted names (None: every candidate site of the image tower).
        ranks: ranks to try (None: ``DEFAULT_RANKS``, each capped by the site's key dimension).
        n_val: validation scenes per set (defended words; other words).
        n_signs: validation signs for the reading-kept figure (0: none).
        tolerance: the pick rule's largest clean / blank-note loss (a fraction).
    """

    sites: Optional[Sequence[str]] = None
    ranks: Optional[Sequence[int]] = None
    n_val: int = 240
    n_signs: int = 120
    tolerance: float = PICK_TOLERANCE


@dataclass
class SweepResult:
    """Rows (one per site x rank), the unedited model's figures, the pick and the time spent."""

    words: list[str]
    baseline: dict[str, Any]
    rows: list[dict[str, Any]]
    picked: Optional[dict[str, Any]]
    tolerance: float
    seconds: dict[str, float] = field(default_factory=dict)
    n_scenes: int = 0
    asked_tolerance: Optional[float] = None

    def ranking(self) -> list[dict[str, Any]]:
        """Rows best first: admissible ones by defended-word gain, then the rest by gain."""
        return sorted(self.rows, key=lambda r: (not r["admissible"], -r["gain"], -r["other_gain"]))

    def rule(self) -> str:
        """The pick rule as applied: the tolerance and the scenes it allows."""
        return pick_rule_text(self.tolerance, self.n_scenes, self.asked_tolerance)

    def to_dict(self) -> dict[str, Any]:
        return {"words": self.words, "baseline": self.baseline, "rows": self.rows, "picked": self.picked,
                "tolerance": self.tolerance, "n_scenes": self.n_scenes,
                "tolerance_scenes": tolerance_in_scenes(self.tolerance, self.n_scenes),
                "rule": self.rule(), "seconds": self.seconds}


def pick_rule_text(tolerance: float = PICK_TOLERANCE, n: int = 0, asked: Optional[float] = None) -> str:
    """The pick rule in one sentence (stored with results and edits); with ``n``, the scenes it allows
    (``asked``: the tolerance given, when it was widened to one scene)."""
    allowed = tolerance_text(tolerance, n, asked) if n else f"{100 * tolerance:g} point"
    return (f"largest defended-word text-note gain with clean and blank-note loss <= {allowed} "
            "on the validation split; ties: larger unseen-word gain, then fewer layers/ranks first")


def plan(bundle: ModelBundle, sites: Optional[Sequence[str]], ranks: Optional[Sequence[int]]
         ) -> list[tuple[str, list[int]]]:
    """(site, ranks) pairs to try, after checking every name and rank.

    Raises:
        SiteError: an unknown site name, or one that cannot be rewritten.
        ClipeditError: a given rank above the key dimension of a named site (unnamed candidate sites
            too narrow for every given rank are skipped); no site or rank to try.
    """
    names = list(sites) if sites else candidate_sites(bundle.image_module, bundle.image_prefix)
    if not names:
        raise SiteError(f"{bundle.name}'s image tower has no candidate site; name one with --sites")
    chosen = sorted(set(ranks)) if ranks else list(DEFAULT_RANKS)
    if not chosen or min(chosen) < 1:
        raise ClipeditError("ranks must be positive integers")
    out = []
    for name in names:
        site = _resolve(bundle, name)
        if sites and ranks and max(chosen) > site.key_dim:
            raise ClipeditError(f"rank {max(chosen)} is above the key dimension of {name} ({site.key_dim})")
        fitting = [r for r in chosen if r <= site.key_dim]
        if ranks and not fitting:  # every candidate site with a fixed rank: skip those too narrow for it
            log.info("skipping %s: key dimension %d is below rank %d", name, site.key_dim, min(chosen))
            continue
        out.append((name, fitting or [site.key_dim]))
    if not out:
        raise ClipeditError(f"rank {min(chosen)} is above the key dimension of every candidate site")
    return out


def _resolve(bundle: ModelBundle, name: str):
    try:
        return resolve_site(bundle.model, name)
    except SiteError as e:
        if name.startswith(bundle.image_prefix) or not bundle.image_prefix:
            raise
        try:  # a name relative to the image tower
            resolve_site(bundle.model, bundle.image_prefix + name)
        except SiteError:
            raise e from None
        raise SiteError(f"no module named {name!r}; did you mean {bundle.image_prefix + name!r}?") from None


def sweep(bundle: ModelBundle, words: str | Sequence[str], settings: Optional[SweepSettings] = None,
          config: Optional[DefenseConfig] = None, data: Optional[HeldoutData] = None) -> SweepResult:
    """Score the rewrite at every (site, rank) on the validation split and pick one.

    Args:
        bundle: the model (left unchanged).
        words: the word(s) defended.
        settings: sites, ranks, validation size, tolerance.
        config: exemplars and statistics settings (renders, mask, seed, reference); default: the model's.
        data: ready validation data (default: built from the model's world).
    """
    settings = settings or SweepSettings()
    words = [words] if isinstance(words, str) else list(words)
    if not words:
        raise ClipeditError("no words to defend against")
    config = (config or DefenseConfig()).resolved(bundle)
    pairs = plan(bundle, settings.sites, settings.ranks)
    seconds: dict[str, float] = {}
    clock = time.perf_counter()
    data = data or heldout_data(bundle, words, settings.n_val, settings.n_signs)
    baseline = score(data)
    seconds["baseline"] = time.perf_counter() - clock
    n_scenes = int(baseline["n"])  # clean and blank-note accuracy are over the defended words' scenes
    tolerance = effective_tolerance(settings.tolerance, n_scenes)

    clock = time.perf_counter()
    exemplars = [a for w in words for a in text_exemplars(bundle, w, config.renders, config.seed, config.photos)]
    request = request_from_attacks(bundle.preprocess, exemplars, use_text_mask=config.mask == "text")
    seconds["exemplars"] = time.perf_counter() - clock
    clock = time.perf_counter()
    sites = [resolve_site(bundle.model, name) for name, _ in pairs]
    collected = collect_exemplars_at(bundle.model, sites, request.attacked, request.target, request.mask,
                                     bundle.encode_images, config.hparams.mask_threshold)
    seconds["keys_values"] = time.perf_counter() - clock

    rows: list[dict[str, Any]] = []
    seconds["statistics"] = seconds["solve"] = seconds["evaluate"] = 0.0
    bar = tqdm(total=sum(len(r) for _, r in pairs), desc="sweep candidates", unit="setting", leave=False,
               disable=None)  # None: shown on terminals only
    for site, (name, site_ranks) in zip(sites, pairs):
        clock = time.perf_counter()
        stats = reference_statistics(bundle, name, config)
        seconds["statistics"] += time.perf_counter() - clock
        clock = time.perf_counter()
        ex = collected[name]
        C = regularise(stats.C, stats.n_keys, config.hparams.cov_reg)
        directions = edit_directions(ex.keys.cpu(), C, max(site_ranks), ex.weights.cpu())
        shared = time.perf_counter() - clock
        for rank in site_ranks:
            clock = time.perf_counter()
            edit = _edit(site, ex, directions[:, :rank])
            solve = time.perf_counter() - clock
            seconds["solve"] += solve
            clock = time.perf_counter()
            apply_edit(bundle.model, edit, check_weights=False)
            try:
                figures = score(data)
            finally:
                revert_edit(bundle.model, edit)
            seconds["evaluate"] += time.perf_counter() - clock
            row = {"method": "edit", "site": name, "rank": int(edit.rank), "seconds": shared + solve,
                   **{k: figures.get(k) for k in SCORED}}
            row.update(gains(row, baseline))
            row["admissible"] = admissible(row, baseline, tolerance)
            rows.append(row)
            bar.update(1)
            log.info("%s rank %d: defended %.3f other %s clean %.3f blank %.3f", name, rank, row["text_acc"],
                     row["other_text_acc"], row["clean_acc"], row["blank_acc"])
        seconds["solve"] += shared
    bar.close()
    best = pick(rows, baseline, tolerance)
    base = {k: baseline.get(k) for k in SCORED}
    return SweepResult(words, base, rows, rows[best] if best is not None else None, tolerance,
                       {k: round(v, 3) for k, v in seconds.items()}, n_scenes, settings.tolerance)


def _edit(site, ex, directions: torch.Tensor) -> LayerEdit:
    """The closed-form edit of ``site`` along ``directions`` (digests set, so it can be reverted)."""
    lam = solve_closed_form(site, ex, directions)
    w = site.weight.detach()
    edit = LayerEdit(layer=site.layer, lam=lam.float().cpu(), directions=directions.float().cpu(),
                     orig_weight=w.cpu().clone(), meta={"orig_sha256": tensor_digest(w)})
    edit.check_finite()
    edit.meta["edited_sha256"] = edited_digest(edit)
    return edit


def pareto_front(points: Sequence[tuple[float, float]]) -> list[int]:
    """Indices of the points no other point beats on both axes (cost lower-or-equal, gain higher-or-equal,
    one strictly), ordered by cost."""
    front = [i for i, (c, g) in enumerate(points)
             if not any((c2 <= c and g2 >= g) and (c2 < c or g2 > g) for c2, g2 in points)]
    return sorted(front, key=lambda i: (points[i][0], points[i][1]))


def cost(row: dict[str, Any]) -> float:
    """A row's cost on the trade-off plot: the larger of its clean and blank-note losses."""
    return max(row["clean_loss"], row["blank_loss"])


def plot_tradeoff(rows: Sequence[dict[str, Any]], path, title: str = "", tolerance: float = PICK_TOLERANCE,
                  picked: Optional[dict[str, Any]] = None) -> None:
    """Gain (defended-word text-note accuracy) vs cost (clean/blank loss), one marker per method,
    one colour per site, the Pareto front drawn; written as a PNG at ``path``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from clipedit.io import atomic_path

    markers = dict(zip(["edit", "head-ablation", "paint", "finetune-local", "finetune-global"], "os^DvP"))
    labels = sorted({r.get("site") or r["method"] for r in rows}, key=lambda s: [r.get("site") or r["method"]
                                                                                   for r in rows].index(s))
    colours = {lab: plt.cm.tab10(i % 10) for i, lab in enumerate(labels)}
    points = [(100 * cost(r), 100 * r["gain"]) for r in rows]
    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=120)
    seen = set()
    for r, (x, y) in zip(rows, points):
        lab = r.get("site") or r["method"]
        legend = f"{r['method']}: {lab.removeprefix('visual.')}" if r.get("site") else r["method"]
        ax.scatter(x, y, marker=markers.get(r["method"].split(" ")[0], "X"), color=colours[lab], s=36,
                   label=None if legend in seen else legend, zorder=3)
        seen.add(legend)
        if r.get("rank") is not None:
            ax.annotate(str(r["rank"]), (x, y), textcoords="offset points", xytext=(4, 3), fontsize=7)
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
    from matplotlib.ticker import FuncFormatter, SymmetricalLogLocator

    # ticks at 1, 2, 5 x 10^k (and the linear part): a narrow range of costs still gets labelled ticks
    ax.xaxis.set_major_locator(SymmetricalLogLocator(base=10, linthresh=1.0, subs=[1.0, 2.0, 5.0]))
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    ax.set_xlabel("cost: max(clean loss, blank-note loss), points (symlog scale)")
    ax.set_ylabel("gain: defended-word text-note accuracy, points")
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
