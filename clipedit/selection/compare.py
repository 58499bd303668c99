"""Every defense tuned on validation only, scored on the same test scenes, its budget beside it.

Every method runs through the method table (:func:`clipedit.methods.registry.run_defense`); its
properties (word-specific or word-agnostic, which towers it applies to) come from its
:class:`~clipedit.methods.spec.MethodSpec`. For each seed and defended word, each word-specific
method defends a fresh copy of the model from the same rendered exemplars of the word
(``DefenseConfig.seed`` = the seed); each word-agnostic method (the peers, and the rewrite against any
word, ``edit-any-word``) defends once per seed from the same typographic training split of that seed
(:mod:`clipedit.data.prepare.typo_train`) or ``"*"``'s vocabulary, scored on every word. Every method that
selects anything selects on the same validation sets (the validation split's leave-out factors,
``n_val`` scenes); all are scored on the test split: the defended word's notes, unseen words' notes,
clean, blank note and signs (reading kept). Each run's budget (images seen, optimizer steps, settings
tried, the offline grid behind its defaults, seconds) is in the record under ``budget``.

Word-disjoint split (:mod:`clipedit.data.prepare.word_split`; class words: the model's world's, or the
classes of ``data``): the class words are split by a seeded hash (``word_seed``) into words any method
may train or render on and held-out words no method sees; the "unseen words" cells write (or, on a
benchmark, show) held-out words only, for every method; recorded under ``word_split``.

The record keeps every method's per-image outcomes (``raw``), from which :mod:`clipedit.eval.compare_stats`
computes every cell (n = distinct images; one seed: Wilson; several: a bootstrap over images and seeds),
per-word, per-seed and strata cells, and every method against ``unedited`` and ``edit`` as a paired
difference (exact McNemar, Holm).

On a user's labelled data (``CompareSettings.data``: ``KIND:PATH`` as ``audit --dataset`` reads it, or
an ImageFolder ``DIR``) the validation/test split is :func:`clipedit.data.splits.split_data`'s seeded
hash of file names (``split_seed``; recorded under ``data``): every method's exemplars, training split
and tuning come from the validation side, every cell from the test side, as
:mod:`clipedit.data.prepare.user_data` defines them; a metric the data cannot give is left out of the
table and named in ``notes``, never filled in. ``supported``: PAINT's supported task (an ImageFolder).
"""
from __future__ import annotations

import copy
import dataclasses
import json
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Optional

from clipedit.core.distributed import agree, digest_of, rank_alone, rank_and_world
from clipedit.core.hparams import COUNT, COUNT0, SEED, Bound, check_fields
from clipedit.data.prepare.user_data import (
    default_words,
    scoring_sets,
    with_validation_world,
)
from clipedit.data.prepare.vocabulary import ANY_WORD
from clipedit.data.prepare.word_split import WordSplit, WordSplitWorld, word_split
from clipedit.data.splits import DataSplit, split_data
from clipedit.defenses.typographic import DefenseConfig, defense_data, reference_statistics
from clipedit.errors import ClipeditError, SettingsError
from clipedit.eval.evaluation import N_EVAL
from clipedit.eval.heldout import SCENE_OFFSET
from clipedit.eval.pick import heldout_data
from clipedit.methods.registry import METHODS, method_spec, run_defense
from clipedit.models.bundle import ModelBundle
from clipedit.selection.compare_results import assemble_units, build_record
from clipedit.selection.compare_scoring import counts, image_strata
from clipedit.selection.compare_units import (
    UNEDITED,
    Unit,
    as_json,
    done_everywhere,
    gather_units,
    grid_units,
    my_units,
    read_partials,
    seed_unit,
    unit_key,
    write_partial,
)
from clipedit.settings.resolve import resolve_config

log = logging.getLogger(__name__)


def compare_methods() -> tuple[str, ...]:
    """The methods of compare: the table's (:data:`~clipedit.methods.registry.METHODS`) marked ``in_compare``,
    in table order (registered methods included)."""
    return tuple(m for m, spec in METHODS.items() if spec.in_compare)


#: compare's methods as the table held them at import (the CLI's help text); :func:`compare_methods` is live.
COMPARE_METHODS: tuple[str, ...] = compare_methods()


#: Defended words on the model's own world when none are given.
WORLD_WORDS: tuple[str, ...] = ("ipod", "mug", "apple")


@dataclass
class CompareSettings:
    """What ``clipedit compare`` runs (defaults: the issue's minimum scale).

    Attributes:
        methods: methods to run (None: every method that applies to the model).
        words: defended words (each defended separately; None: ``WORLD_WORDS`` on the model's world,
            :func:`~clipedit.data.prepare.user_data.default_words` on ``data``).
        seeds: seeds of exemplars, training splits and training order.
        n_test: test scenes per set (defended word, other words); ``n_signs`` test signs.
        n_train: scenes of the typographic training split (Dyslexify, PAINT).
        n_val: validation scenes per set for the methods' own tuning.
        hparams: method -> settings over its defaults (its hparams class's fields), e.g. a shorter
            ``defense-prefix`` schedule; recorded with the results.
        data: a user's labelled data (``KIND:PATH`` or an ImageFolder), split by ``split_seed``; ``classes``
            its class names (default: the benchmark's or the folder names).
        supported, supported_classes: the supported task (an ImageFolder) and its class names, for the
            methods whose selection rule has one (PAINT, Defense-Prefix).
        word_seed: seed of the word-disjoint split of the class words (the model's world's, or ``data``'s
            classes).
    """

    methods: Optional[tuple[str, ...]] = None
    words: Optional[tuple[str, ...]] = None
    seeds: tuple[int, ...] = (0, 1, 2)
    n_test: int = N_EVAL
    n_signs: int = 1000
    n_train: int = 1000
    n_val: int = 500
    hparams: dict[str, dict] = dataclasses.field(default_factory=dict)
    data: Optional[str] = None
    classes: Optional[tuple[str, ...]] = None
    split_seed: int = 0
    supported: Optional[str] = None
    supported_classes: Optional[tuple[str, ...]] = None
    word_seed: int = 0

    #: The schema's ranges (types: the annotations), checked on construction (CLI and Python alike).
    BOUNDS: ClassVar[dict[str, Bound]] = {"seeds": SEED, "n_test": COUNT, "n_signs": COUNT0, "n_train": COUNT,
                                          "n_val": COUNT, "split_seed": SEED, "word_seed": SEED}

    def __post_init__(self) -> None:
        check_fields(self, self.BOUNDS, SettingsError)


def check_given(settings: CompareSettings) -> None:
    """What :func:`check_settings` refuses without the model (run before it loads): empty seeds or words,
    counts below 1, unknown methods, and --hparams for unknown methods or with unknown fields."""
    if not settings.seeds:
        raise ClipeditError("--seeds is empty: give at least one seed, e.g. --seeds 0,1,2")
    if settings.words is not None and not settings.words:
        raise ClipeditError("--words is empty: give at least one word to defend against")
    for name in ("n_test", "n_train", "n_val", "n_signs"):
        if getattr(settings, name) < (0 if name == "n_signs" else 1):
            raise ClipeditError(f"{name} must be >= {0 if name == 'n_signs' else 1}, got {getattr(settings, name)}")
    known = compare_methods()
    stray = sorted(set(settings.hparams) - set(known))
    if stray:
        raise ClipeditError(f"--hparams names unknown method {stray[0]!r} (choose from {', '.join(known)})")
    for m, given in settings.hparams.items():  # unknown fields: one line, before any work
        if not isinstance(given, dict):
            raise ClipeditError(f"--hparams: the settings of {m} must be a JSON object")
        METHODS[m].hparams_cls.from_dict(dict(given))
    unknown = [m for m in settings.methods or () if m not in known]
    if unknown:
        raise ClipeditError(f"unknown method {unknown[0]!r} (choose from {', '.join(known)})")
    if settings.methods is not None and not settings.methods:
        raise ClipeditError("--methods is empty")


def check_settings(bundle: ModelBundle, settings: CompareSettings) -> tuple[str, ...]:
    """The methods to run; refuses unknown or inapplicable methods, empty seeds/words, empty sets
    (:func:`check_given`, then what needs the model).

    Raises:
        ClipeditError: one line saying what is wrong.
    """
    check_given(settings)
    if bundle.world is None or not bundle.world.classnames:
        raise ClipeditError(f"{bundle.name} has no labelled world to compare on (give --data KIND:PATH)")
    for m, given in settings.hparams.items():  # what defend receives, checked as defend checks it (a layer
        resolve_config(bundle, DefenseConfig(method=m, hparams=dict(given) or None))  # not in the model included)
    if settings.methods is None:
        chosen = tuple(m for m in compare_methods() if METHODS[m].not_applicable(bundle, m) is None)
    else:
        for m in settings.methods:
            why = METHODS[m].not_applicable(bundle, m)
            if why:
                raise ClipeditError(f"{m} does not apply to {bundle.name}: {why}")
        chosen = tuple(settings.methods)
    takes_supported = [m for m in chosen
                       if "supported" in {f.name for f in dataclasses.fields(METHODS[m].hparams_cls)}]
    if settings.supported is not None and not takes_supported:
        raise ClipeditError("--supported is a supported task (PAINT's), and no method run takes one "
                            f"({', '.join(chosen)}): add paint to --methods or leave --supported out")
    return chosen


def fixed_settings(settings: CompareSettings, seed: int) -> dict[str, Any]:
    """compare's protocol, laid over each method's defaults where its settings class has the field: the
    training split's size and seed, the validation size (every method selects on the same sets), the
    validation signs and the supported task."""
    fixed = {"n_train": settings.n_train, "n_val": settings.n_val, "seed": seed,
             "n_signs": min(settings.n_signs, settings.n_val)}
    if settings.supported:
        fixed.update(supported=settings.supported, supported_classes=settings.supported_classes)
    return fixed


def _copy(bundle: ModelBundle) -> ModelBundle:
    return dataclasses.replace(bundle, model=copy.deepcopy(bundle.model))


def run_method(base: ModelBundle, method: str, word: Optional[str], seed: int, settings: CompareSettings,
               shared: dict[str, Any]) -> tuple[ModelBundle, dict[str, Any], float]:
    """Defend a copy of ``base`` with ``method`` through the method table (``word`` None: a word-agnostic
    method, once for every word); returns (bundle, details with ``budget``, seconds incl. its own data)."""
    spec = method_spec(method)
    bundle = _copy(base)
    fixed = fixed_settings(settings, seed)
    peers = {m: METHODS[m].settings(settings.hparams.get(m, {}), fixed) for m in compare_methods()}
    start = time.perf_counter()
    config = resolve_config(bundle, DefenseConfig(method=method, seed=seed, hparams=peers[method] or None))
    words = [ANY_WORD] if config.any_word else [word] if word is not None else list(settings.words)
    data = defense_data(bundle, words, config)
    result = run_defense(bundle, data, config, lambda layer: reference_statistics(bundle, layer, config),
                         shared=shared, peers=peers)
    details = {"layer": result.layer, **result.details, "word_agnostic": spec.word_agnostic,
               "plain_weights": spec.plain_weights}
    seconds = time.perf_counter() - start + details.get("budget", {}).get("data_seconds", 0.0)
    details["budget"] = {**details.get("budget", {}), "seconds": round(seconds, 3)}
    return bundle, details, seconds


def resolved(settings: CompareSettings, split: Optional[DataSplit] = None) -> CompareSettings:
    """``settings`` with its words filled in (``WORLD_WORDS``, or the data's defaults)."""
    if settings.words is not None:
        return settings
    return dataclasses.replace(settings, words=tuple(default_words(split)) if split is not None else WORLD_WORDS)


def compare(base: ModelBundle, settings: CompareSettings, progress: Callable[[str], None] = log.info,
            on_method: Optional[Callable[[dict[str, Any]], None]] = None,
            split: Optional[DataSplit] = None, partial_dir: Optional[Path] = None) -> dict[str, Any]:
    """Run every method of ``settings`` and score it; returns the record (cells, raw counts, details).

    Under ``torchrun`` (an initialised process group) the units of the grid are shared over the ranks and
    every rank returns the whole record, equal to one process's (:mod:`clipedit.selection.compare_units`).

    Args:
        on_method: called with this rank's record so far after each unit it runs.
        split: ``settings.data`` already split (default: split here).
        partial_dir: where each rank keeps its finished units (``compare.rank{R}.partial.json``) and a
            restarted run takes them from (None: no partial files).
    """
    split = split if split is not None or settings.data is None else \
        split_data(settings.data, settings.split_seed, settings.classes)
    if split is not None:  # every method draws from the validation side; the cells come from the test side
        base = with_validation_world(base, split)
    settings = resolved(settings, split)
    methods = check_settings(base, settings)
    t_all = time.perf_counter()
    # the class words (the world's, or the data's classes) split: held-out words no method trains, renders or
    # validates on; the unseen-words cells write (an ImageFolder) or show (a benchmark) held-out words only.
    # On data with fewer than two class words besides the defended ones nothing can be held out: no split,
    # and no unseen-words cell (said in the notes)
    try:
        words_apart: Optional[WordSplit] = word_split(base.world.classnames, settings.words, settings.word_seed)
    except ClipeditError:
        if split is None:
            raise
        words_apart = None
    if split is not None:
        tests = scoring_sets(base, split, settings.words, settings.n_test, settings.n_signs,
                             unseen=words_apart.heldout if words_apart is not None else ())
    else:
        tests = {w: heldout_data(base, [w], settings.n_test, settings.n_signs or None, split="test",
                                 offset=i * SCENE_OFFSET,  # each word its own scenes and signs
                                 other_words=words_apart.heldout)  # unseen words: held out of every method
                 for i, w in enumerate(settings.words)}
    if words_apart is not None:
        base = dataclasses.replace(base, world=WordSplitWorld(base.world, words_apart))  # what methods see
    digest = settings_digest(base, settings, methods)
    agree(digest, "compare settings")
    units = grid_units(methods, settings.seeds, settings.words, {m: METHODS[m].word_agnostic for m in methods})
    own = read_partials(partial_dir, digest, units)
    mine = my_units(units, done_everywhere(own))
    rank, world = rank_and_world()
    if own or len(mine) < len(units):
        progress(f"rank {rank}/{world}: {len(mine)} of {len(units)} units to run here"
                 f"{f', {len(own)} taken from partial files' if own else ''}")
    shared: dict[str, Any] = {}
    for i, unit in enumerate(mine):
        method, seed, word = unit
        if unit != UNEDITED and (i == 0 or mine[i - 1][0] != method):
            progress(f"{method}: started ({len(settings.seeds)} seed(s) x {len(settings.words)} word(s))")
        with rank_alone():  # a unit runs whole on this rank: its statistics are not shared with the others
            own[unit_key(unit)] = run_unit(base, unit, settings, tests, shared)
        progress("unedited: scored" if unit == UNEDITED else
                 f"{method} seed {seed}{f' {word}' if word else ''}: {own[unit_key(unit)]['seconds']:.0f} s")
        write_partial(partial_dir, digest, own)
        if unit != UNEDITED and (i + 1 == len(mine) or mine[i + 1][0] != method):
            spent = sum(r["seconds"] for k, r in own.items() if json.loads(k)[0] == method)
            progress(f"{method}: done in {spent:.0f} s")
        if on_method is not None:
            on_method(build_record(*assemble_units(units, own), methods, settings, t_all, split, words_apart,
                                   final=False))
    done = gather_units(own)
    return build_record(*assemble_units(units, done), methods, settings, t_all, split, words_apart,
                   strata=image_strata(tests))


def settings_digest(base: ModelBundle, settings: CompareSettings, methods: Sequence[str]) -> str:
    """What a unit's results depend on: the settings, the methods and the model (a partial file made with
    other ones is not reused)."""
    return digest_of({"settings": dataclasses.asdict(settings), "methods": list(methods), "model": base.name,
                      "pretrained": base.pretrained, "source": base.source}).hex()


def run_unit(base: ModelBundle, unit: Unit, settings: CompareSettings, tests: dict[str, Any],
             shared: dict[str, Any]) -> dict[str, Any]:
    """One unit of the grid (:mod:`clipedit.selection.compare_units`): ``raw`` ({word: counts}), ``seconds``
    and ``details`` (None for the unedited model), seeded from the unit alone."""
    method, seed, word = unit
    seed_unit(unit)
    if unit == UNEDITED:
        return as_json({"raw": {w: counts(tests[w], base) for w in settings.words}, "seconds": 0.0,
                        "details": None})
    bundle, det, secs = run_method(base, method, word, int(seed), settings, shared)
    scored = [word] if word is not None else list(settings.words)
    return as_json({"raw": {w: counts(tests[w], bundle) for w in scored}, "seconds": secs, "details": det})
