"""Sweep the rewrite over sites x ranks, scored on the validation split, and pick a setting.

    result = sweep(bundle, ["ipod"])            # every candidate site of the image tower x ranks
    result.picked                               # the row the pick rule chose (or None)

Pick rule (:mod:`clipedit.eval.pick`): among settings whose clean and blank-note accuracy
each lose at most 0.5 point against the unedited model on the validation split, the largest gain in
text-note accuracy on the defended word(s); ties go to the larger gain on unseen words, then to the
earlier row (sites in forward order, ranks ascending). ``defend --layer auto`` / ``--rank auto`` use it.
Reading kept (signs, :mod:`clipedit.eval.reading`) is scored and recorded for every candidate (n and 95%
Wilson interval) and drawn against the defended word, and it is in the rule: a candidate must also lose at
most ``SweepSettings.reading_tolerance`` of reading against the unedited model (default
:data:`READING_TOLERANCE`, 5 points; ``sweep --reading-tolerance POINTS``; None: reading recorded, not in the
rule). Without signs (``n_signs=0``) the rule has no reading bound, and says so.

What is scored is what ``defend`` applies: every candidate is built by the one closed-form solver
(:func:`clipedit.core.exemplar_sums.closed_form_edit`) with the resolved settings (``keep_targets``,
``cov_reg``, mask …), as an :class:`~clipedit.core.edit_sets.EditSet` (:func:`candidate_edits`).
Candidates are single sites x ranks, and multi-site sets (``SweepSettings.site_sets``; by default the
model's own default sites when it has several, e.g. mini-vit's), solved in order exactly as ``defend``
solves them.

Cost: the exemplar sums of every single site come from one traced pass of each batch of attacked and
of blank exemplars; each site's key statistics are computed once (and cached on disk); each site's
edit directions are computed once at the largest rank and cut to each smaller rank (the top-r
directions are the first r of them), leaving one least-squares solve per candidate. A multi-site
candidate costs what its ``defend`` costs. Candidates are applied, scored and reverted on the
caller's model, which ends unchanged. Closed-form solver only.
"""
from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Optional

from tqdm.auto import tqdm

from clipedit.core import EditSet, apply_edit_set, resolve_site, revert_edit_set
from clipedit.core.exemplar_sums import (
    accumulate_exemplar_sums_at,
    accumulate_kept_sums,
    closed_form_edit,
    directions_from_sums,
)
from clipedit.core.sites import candidate_sites
from clipedit.core.subspace import regularise
from clipedit.defenses.typographic import defense_data, reference_statistics
from clipedit.errors import ClipeditError, SiteError
from clipedit.eval.intervals import wilson
from clipedit.eval.pick import (
    PICK_TOLERANCE,
    HeldoutData,
    Tolerance,
    admissible,
    gains,
    heldout_data,
    pick,
    scene_tolerance,
    score,
    tolerance_in_scenes,
    tolerance_text,
)
from clipedit.methods.registry import METHODS, method_spec, run_defense
from clipedit.models.bundle import ModelBundle
from clipedit.settings.config import DefenseConfig
from clipedit.settings.resolve import resolve_config

log = logging.getLogger(__name__)


DEFAULT_RANKS: tuple[int, ...] = (1, 4, 16, 32, 64)
#: The pick rule's largest loss of reading kept (signs, a fraction) against the unedited model.
READING_TOLERANCE = 0.05
SCORED = ("text_acc", "other_text_acc", "clean_acc", "blank_acc", "reading_acc", "attack_success_rate")


#: The scene count each scored figure is over (``score``'s keys): defended words' scenes, other words', signs.
COUNTS = {"text_acc": "n", "clean_acc": "n", "blank_acc": "n", "attack_success_rate": "n",
          "other_text_acc": "n_other", "reading_acc": "reading_n"}


def with_intervals(figures: dict[str, Any]) -> dict[str, Any]:
    """The scored figures of ``figures`` (``score``'s), plus ``intervals``: for each, the accuracy, its n
    (distinct images), hits and 95% Wilson interval; and ``reading``, the reading-kept one alone (None without
    signs)."""
    out = {k: figures.get(k) for k in SCORED}
    intervals = {}
    for key, count in COUNTS.items():
        acc, n = figures.get(key), figures.get(count)
        if acc is None or not n:
            continue
        hits = int(round(float(acc) * int(n)))
        lo, hi = wilson(hits, int(n))
        intervals[key] = {"acc": float(acc), "n": int(n), "hits": hits, "ci": [lo, hi]}
    out["intervals"] = intervals
    out["reading"] = intervals.get("reading_acc")
    return out


@dataclass
class SweepSettings:
    """What a sweep tries and how it scores.

    Attributes:
        sites: dotted names (None: every candidate site of the image tower).
        ranks: ranks to try (None: ``DEFAULT_RANKS``, each capped by the site's key dimension).
        site_sets: multi-site candidates (each a list of sites solved in order) tried at each of
            ``ranks`` (None: the model's default sites at its default rank when it has several and
            ``sites`` is not given; ``()``: none).
        n_val: validation scenes per set (defended words; other words).
        n_signs: validation signs for the reading-kept figure (0: none).
        tolerance: the pick rule's largest clean / blank-note loss (a fraction).
        reading_tolerance: the largest reading-kept loss (a fraction) a pick may also cost (default
            :data:`READING_TOLERANCE`; None, or no signs: reading is recorded but not in the rule).
    """

    sites: Optional[Sequence[str]] = None
    ranks: Optional[Sequence[int]] = None
    site_sets: Optional[Sequence[Sequence[str]]] = None
    n_val: int = 240
    n_signs: int = 120
    tolerance: float = PICK_TOLERANCE
    reading_tolerance: Optional[float] = READING_TOLERANCE


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
    reading: Optional[Tolerance] = None

    def ranking(self) -> list[dict[str, Any]]:
        """Rows best first: admissible ones by defended-word gain, then the rest by gain."""
        return sorted(self.rows, key=lambda r: (not r["admissible"], -r["gain"], -r["other_gain"]))

    def rule(self) -> str:
        """The pick rule as applied: the tolerance and the scenes it allows."""
        text = pick_rule_text(self.tolerance, self.n_scenes, self.asked_tolerance)
        if self.reading is None:
            return text
        return f"{text}; reading kept (signs) loss <= {self.reading.text()}"

    def to_dict(self) -> dict[str, Any]:
        return {"words": self.words, "baseline": self.baseline, "rows": self.rows, "picked": self.picked,
                "tolerance": self.tolerance, "n_scenes": self.n_scenes,
                "tolerance_scenes": tolerance_in_scenes(self.tolerance, self.n_scenes),
                "selection": {"rule": self.rule(), "tolerance": self.tolerance_record(),
                              "reading_tolerance": self.reading.to_dict() if self.reading is not None else None},
                "rule": self.rule(), "seconds": self.seconds}

    def tolerance_record(self) -> dict[str, Any]:
        """The tolerance as applied: asked, applied, scenes it allows on ``n_scenes``, widened or not."""
        asked = self.tolerance if self.asked_tolerance is None else self.asked_tolerance
        return Tolerance(asked, self.tolerance, self.n_scenes, "the sweep's pick-rule tolerance").to_dict()


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


@dataclass
class Candidate:
    """One setting the sweep scores: its sites (several: solved in order), rank, and the edit made."""

    sites: tuple[str, ...]
    rank: int
    edit_set: EditSet
    seconds: float


def sweep(bundle: ModelBundle, words: str | Sequence[str], settings: Optional[SweepSettings] = None,
          config: Optional[DefenseConfig | dict] = None, data: Optional[HeldoutData] = None) -> SweepResult:
    """Score the rewrite at every candidate on the validation split and pick one.

    Args:
        bundle: the model (left unchanged).
        words: the word(s) defended.
        settings: sites, ranks, multi-site sets, validation size, tolerance.
        config: exemplars, statistics and solver settings (renders, mask, seed, reference, keep_targets …);
            resolved by :func:`resolve_config` as ``defend`` resolves it.
        data: ready validation data (default: built from the model's world).
    """
    settings = settings or SweepSettings()
    words = [words] if isinstance(words, str) else list(words)
    if not words:
        raise ClipeditError("no words to defend against")
    config = resolve_config(bundle, config)
    if not method_spec(config.method).sweepable or config.any_word:
        swept = ", ".join(m for m, spec in METHODS.items() if spec.sweepable)
        what = f"{config.method}{' against any word' if config.any_word else ''}"
        raise ClipeditError(f"the sweep chooses the sites and rank of a method that acts on sites ({swept}) for "
                            f"named words; {what} is not swept")
    seconds: dict[str, float] = {}
    clock = time.perf_counter()
    data = data or heldout_data(bundle, words, settings.n_val, settings.n_signs)
    baseline = score(data)
    seconds["baseline"] = time.perf_counter() - clock
    n_scenes = int(baseline["n"])  # clean and blank-note accuracy are over the defended words' scenes
    tol = scene_tolerance(settings.tolerance, n_scenes, "the sweep's pick-rule tolerance")
    reading_tol = None
    if settings.reading_tolerance is not None and data.signs is None:
        log.warning("no signs scored (n_signs=0): the pick rule has no reading bound")
    elif settings.reading_tolerance is not None:
        reading_tol = scene_tolerance(settings.reading_tolerance, len(data.signs.images),
                                      "the sweep's reading tolerance")
    rows: list[dict[str, Any]] = []
    seconds["solve"] = seconds["evaluate"] = 0.0
    pairs, site_sets = _candidates(bundle, settings, config)
    total = sum(len(r) for _, r in pairs) + len(site_sets) * len(settings.ranks or [config.hparams.rank])
    bar = tqdm(candidate_edits(bundle, words, settings, config), total=total, desc="sweep candidates",
               unit="setting", leave=False, disable=None)  # None: shown on terminals only
    for candidate in bar:
        seconds["solve"] += candidate.seconds
        clock = time.perf_counter()
        figures = score(data)
        seconds["evaluate"] += time.perf_counter() - clock
        name = "+".join(candidate.sites)
        row = {"method": config.method, "site": name, "sites": list(candidate.sites), "rank": candidate.rank,
               "seconds": round(candidate.seconds, 3), **with_intervals(figures)}
        row.update(gains(row, baseline))
        row["admissible"] = admissible(row, baseline, tol, reading_tol)
        rows.append(row)
        log.info("%s rank %d: defended %.3f other %s clean %.3f blank %.3f", name, candidate.rank, row["text_acc"],
                 row["other_text_acc"], row["clean_acc"], row["blank_acc"])
    best = pick(rows, baseline, tol, reading_tol)
    base = with_intervals(baseline)
    return SweepResult(words, base, rows, rows[best] if best is not None else None, tol.applied,
                       {k: round(v, 3) for k, v in seconds.items()}, n_scenes, settings.tolerance, reading_tol)


def candidate_edits(bundle: ModelBundle, words: list[str], settings: SweepSettings, config: DefenseConfig
                    ) -> Iterator[Candidate]:
    """Every candidate's edit, applied to ``bundle.model`` while the caller holds it (reverted when the
    next is asked for, and when the loop ends): single sites x ranks first, then multi-site sets.

    ``config`` is resolved; each candidate is what ``defend`` with ``config`` at that site (or sites) and
    rank applies (same solver, same settings, same exemplars).
    """
    pairs, site_sets = _candidates(bundle, settings, config)
    exemplars = defense_data(bundle, words, config)
    hp = config.hparams
    if not method_spec(config.method).closed_form:  # every candidate is one run of the method
        site_sets = [(name,) for name, _ in pairs] + list(site_sets)
        pairs = []
    elif hp.solver != "closed-form":
        raise ClipeditError("the sweep scores closed-form edits; --solver optimize is not swept")
    clock = time.perf_counter()
    sites = [resolve_site(bundle.model, name) for name, _ in pairs]
    all_sums = accumulate_exemplar_sums_at(bundle.model, sites, exemplars.requests(), bundle.encode_images,
                                           hp.mask_threshold, with_targets=hp.keep_targets > 0,
                                           class_token=hp.class_token) if sites else {}
    if sites and hp.keep_reading > 0:  # the signs' keys, kept as they are (what defend's solve keeps)
        accumulate_kept_sums(bundle.model, sites, all_sums, exemplars.keep(), bundle.encode_images,
                             hp.mask_threshold, class_token=hp.class_token)
    shared = (time.perf_counter() - clock) / max(len(sites), 1)
    for site, (name, site_ranks) in zip(sites, pairs):
        clock = time.perf_counter()
        stats = reference_statistics(bundle, name, config)
        C = regularise(stats.C, stats.n_keys, hp.cov_reg)
        directions = directions_from_sums(all_sums[name], C, max(site_ranks))
        setup = shared + time.perf_counter() - clock
        for rank in site_ranks:
            clock = time.perf_counter()
            edit = closed_form_edit(site, all_sums[name], C, rank, hp.keep_targets,
                                    {"hparams": dataclasses.replace(hp, layer=name, rank=rank).to_dict()},
                                    directions=directions[:, :rank], keep_reading=hp.keep_reading)
            edit_set = EditSet([edit])
            apply_edit_set(bundle.model, edit_set)
            try:
                yield Candidate((name,), edit.rank, edit_set, setup + time.perf_counter() - clock)
            finally:
                revert_edit_set(bundle.model, edit_set)
            setup = 0.0
    single = {name: ranks for name, ranks in _candidates(bundle, settings, config)[0]}
    for site_set in site_sets:
        for rank in (single[site_set[0]] if len(site_set) == 1 else None) or settings.ranks or [config.hparams.rank]:
            clock = time.perf_counter()
            candidate = dataclasses.replace(config, sites=tuple(site_set),
                                            hparams=dataclasses.replace(hp, layer=None, rank=rank))
            result = run_defense(bundle, exemplars, resolve_config(bundle, candidate),
                                 lambda layer: reference_statistics(bundle, layer, config))
            if result.edit_set is None:
                raise ClipeditError(f"{config.method} returned no edit set to score and revert")
            try:
                yield Candidate(tuple(site_set), rank, result.edit_set, time.perf_counter() - clock)
            finally:
                revert_edit_set(bundle.model, result.edit_set)


def _candidates(bundle: ModelBundle, settings: SweepSettings, config: DefenseConfig
                ) -> tuple[list[tuple[str, list[int]]], list[tuple[str, ...]]]:
    """(single sites with their ranks, multi-site sets) to try, names and ranks checked."""
    site_sets = _site_sets(bundle, settings, config)
    pairs = [] if settings.sites is not None and not settings.sites else plan(bundle, settings.sites, settings.ranks)
    if not pairs and not site_sets:
        raise ClipeditError("no candidate to sweep")
    return pairs, site_sets


def _site_sets(bundle: ModelBundle, settings: SweepSettings, config: DefenseConfig) -> list[tuple[str, ...]]:
    """The multi-site candidates: the given sets (names checked), else the resolved ``config``'s sites (the
    model's default sites when none were given) when they are several and no single sites were named."""
    if settings.site_sets is not None:
        sets = [tuple(s) for s in settings.site_sets]
    else:
        default = config.sites if len(config.sites) > 1 else None
        sets = [default] if default and not settings.sites else []
    for site_set in sets:
        if len(site_set) < 2 or len(set(site_set)) != len(site_set):
            raise ClipeditError(f"a multi-site candidate needs two or more distinct sites: {'+'.join(site_set)}")
        for name in site_set:
            _resolve(bundle, name)
    return sets


def choose_by_sweep(bundle: ModelBundle, words: list[str], config: DefenseConfig, auto: Sequence[str],
                    n_val: int = SweepSettings.n_val) -> tuple[DefenseConfig, dict[str, Any]]:
    """``--layer auto`` / ``--rank auto`` (``auto`` names which): sweep on the validation split at ``n_val``
    scenes per set (``defend --n-val``, the meaning of sweep's and compare's ``--n-val``; signs: at most
    ``SweepSettings.n_signs``) and take the pick rule's setting; returns (the config to defend with, what was
    chosen and by which rule, with ``n`` and ``n_signs``). No admissible setting: ``config`` unchanged."""
    if not method_spec(config.method).sweepable or config.any_word:
        raise ClipeditError("--layer/--rank auto go with a method that acts on sites (--method edit) and rendered "
                            "exemplars of named words")
    auto_layer, auto_rank = "layer" in auto, "rank" in auto
    hp, single = config.hparams, len(config.sites) == 1
    settings = SweepSettings(sites=None if auto_layer else list(config.sites) if single else [],
                             ranks=None if auto_rank else [hp.rank],
                             site_sets=None if auto_layer or single else [config.sites],
                             n_val=n_val, n_signs=min(n_val, SweepSettings.n_signs))
    result = sweep(bundle, words, settings, config)
    picked = result.picked
    selection = {"split": "validation", "n": settings.n_val, "n_signs": settings.n_signs,
                 "rule": result.rule(), "tolerance": result.tolerance_record(),
                 "candidates": len(result.rows),
                 "auto": list(auto), "picked": picked, "baseline": result.baseline}
    if picked is None:
        log.warning("no setting met the pick rule on validation; keeping %s rank %d", "+".join(config.sites), hp.rank)
        return config, selection
    chosen = dataclasses.replace(config, hparams=dataclasses.replace(hp, layer=None, rank=picked["rank"]),
                                 sites=tuple(picked["sites"]))
    return resolve_config(bundle, chosen), selection
