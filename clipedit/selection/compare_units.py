"""compare's grid as units of work, shared over ``torch.distributed`` ranks and kept in per-rank partial files.

A unit is one defended run and its scores: ``("unedited", "-", None)`` (the unedited model on every word,
once), ``(method, seed, None)`` for a word-agnostic method (one run scored on every word) and
``(method, seed, word)`` for a word-specific one. The units are listed in one fixed order
(:func:`grid_units`); under ``torchrun`` the units not done yet are dealt round-robin over the ranks
(:func:`my_units`), each rank writes every unit it finishes to ``compare.rank{R}.partial.json`` under the
output folder (with the digest of the settings that made it), and every rank's results are gathered
(:func:`~clipedit.core.distributed.all_gather_objects`). A restarted run reads the partial files whose
digest matches and redoes only the units missing from them, so a killed rank's units are redone, not lost.
Each unit seeds torch from the unit alone (:func:`seed_unit`): results do not depend on the rank count.
"""
from __future__ import annotations

import json
import logging
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Optional

import torch

from clipedit.core.distributed import all_gather_objects, digest_of, rank_and_world
from clipedit.io import strict_json, write_json

log = logging.getLogger(__name__)

Unit = tuple[str, str, Optional[str]]  # (method, seed, word or None)
UNEDITED: Unit = ("unedited", "-", None)
PARTIAL = re.compile(r"compare\.rank(\d+)\.partial\.json")


def partial_name(rank: int) -> str:
    """The partial record of ``rank`` under the output folder."""
    return f"compare.rank{rank}.partial.json"


def partial_files(folder: Path) -> dict[int, Path]:
    """{rank: path} of the partial records in ``folder`` (any earlier rank count)."""
    if not folder.is_dir():
        return {}
    return {int(m.group(1)): p for p in folder.iterdir() if (m := PARTIAL.fullmatch(p.name))}


def grid_units(methods: Sequence[str], seeds: Sequence[int], words: Sequence[str],
               word_agnostic: dict[str, bool]) -> list[Unit]:
    """Every unit of the grid, in the one-process order (unedited, then methods x seeds x words)."""
    units = [UNEDITED]
    for method in methods:
        for seed in seeds:
            units += [(method, str(seed), None)] if word_agnostic[method] else \
                [(method, str(seed), w) for w in words]
    return units


def unit_key(unit: Unit) -> str:
    return json.dumps(list(unit))


def seed_unit(unit: Unit) -> None:
    """Seed torch's global generator from the unit alone (not from what ran before it on this rank)."""
    torch.manual_seed(int.from_bytes(digest_of(list(unit))[:8], "big") % 2**63)


def as_json(value: Any) -> Any:
    """``value`` as its partial file holds it (lists for tuples, null for NaN), so that a unit read back
    from a partial file and one computed now are the same record."""
    return json.loads(json.dumps(strict_json(value)))


def read_partials(folder: Optional[Path], digest: str, units: Sequence[Unit]) -> dict[str, dict]:
    """The finished units this rank takes over from the partial files in ``folder``: files whose rank index
    falls to this rank (index mod world size), whose digest matches; unreadable or stale files are skipped."""
    if folder is None:
        return {}
    rank, world = rank_and_world()
    wanted, found = {unit_key(u) for u in units}, {}
    for index, path in sorted(partial_files(folder).items()):
        if index % world != rank:
            continue
        try:
            doc = json.loads(path.read_text())
        except (OSError, ValueError) as e:
            log.warning("%s: unreadable (%s); its units are run again", path, e)
            continue
        if not isinstance(doc, dict) or doc.get("digest") != digest or not isinstance(doc.get("units"), dict):
            log.warning("%s: made with other settings; its units are run again", path)
            continue
        found.update({k: v for k, v in doc["units"].items() if k in wanted and _well_formed(v)})
    return found


def _well_formed(result: Any) -> bool:
    """A unit's result as :func:`write_partial` wrote it (anything else is run again)."""
    return (isinstance(result, dict) and isinstance(result.get("raw"), dict)
            and all(isinstance(v, dict) for v in result["raw"].values())
            and isinstance(result.get("seconds"), (int, float))
            and isinstance(result.get("details"), (dict, type(None))))


def done_everywhere(own: dict[str, dict]) -> set[str]:
    """The keys of the units finished on any rank (every rank gets the same set)."""
    return set().union(*all_gather_objects(sorted(own)))


def my_units(units: Sequence[Unit], done: set[str]) -> list[Unit]:
    """This rank's share of the units not done: every world-size-th one, from this rank's index on."""
    rank, world = rank_and_world()
    return [u for u in units if unit_key(u) not in done][rank::world]


def write_partial(folder: Optional[Path], digest: str, own: dict[str, dict]) -> None:
    """This rank's finished units (atomically: a kill leaves the previous file)."""
    if folder is None:
        return
    folder.mkdir(parents=True, exist_ok=True)
    rank, world = rank_and_world()
    write_json(folder / partial_name(rank), {"partial": True, "digest": digest, "rank": rank, "world": world,
                                             "units": own})


def gather_units(own: dict[str, dict]) -> dict[str, dict]:
    """Every rank's finished units, on every rank."""
    merged: dict[str, dict] = {}
    for part in all_gather_objects(own):
        merged.update(part)
    return merged


def remove_partials(folder: Path) -> None:
    """Remove the partial records once the whole record is written."""
    for path in partial_files(folder).values():
        path.unlink(missing_ok=True)
