"""Class names: how they are matched, checked and mapped between lists."""
from __future__ import annotations

from collections.abc import Sequence
from typing import Optional

from clipedit.errors import ClipeditError

#: The rule for the case of a word, printed where it matters: matching ignores case, rendering keeps it.
CASE_RULE = "a word names a class whatever its case (and spaces or underscores), and is rendered as given"


def case_note(words: Sequence[str], classnames: Sequence[str]) -> Optional[str]:
    """:data:`CASE_RULE` applied to ``words`` that match a class only when case is ignored (None when none do),
    e.g. ``'iPod' is the class 'ipod' …``."""
    pairs = [(w, classnames[i]) for w in words
             if (i := class_index(w, classnames)) is not None and w != classnames[i]]
    if not pairs:
        return None
    named = ", ".join(f"{w!r} is the class {c!r}" for w, c in pairs)
    return f"{named}: {CASE_RULE}, so notes and exemplars show {', '.join(repr(w) for w, _ in pairs)}"


def normalize_name(name: str) -> str:
    """The form class names are matched in: stripped, lower case, underscores as spaces."""
    return " ".join(name.replace("_", " ").split()).lower()


def class_index(word: str, classnames: Sequence[str]) -> Optional[int]:
    """Index of ``word`` in ``classnames`` (case-insensitive), or None when it is not a class."""
    wanted = normalize_name(word)
    for i, name in enumerate(classnames):
        if normalize_name(name) == wanted:
            return i
    return None


def check_classnames(classnames: Sequence[str]) -> list[str]:
    """``classnames`` as a list; raises on an empty list or on duplicates."""
    names = [str(c).strip() for c in classnames]
    if not names or not any(names):
        raise ClipeditError("the class list is empty")
    if not all(names):
        raise ClipeditError("the class list has an empty name")
    seen: dict[str, str] = {}
    dups = []
    for name in names:
        key = normalize_name(name)
        if key in seen:
            dups.append(name)
        seen[key] = name
    if dups:
        raise ClipeditError(f"duplicate class names: {', '.join(dups)}")
    return names


def remap_labels(labels: Sequence[int], from_names: Sequence[str], to_names: Sequence[str]) -> list[int]:
    """Re-index ``labels`` (into ``from_names``) into ``to_names``, matching names case-insensitively.

    Raises:
        ClipeditError: a used class is missing from ``to_names``.
    """
    mapping: dict[int, int] = {}
    missing = []
    for old in sorted(set(labels)):
        new = class_index(from_names[old], to_names)
        if new is None:
            missing.append(from_names[old])
        else:
            mapping[old] = new
    if missing:
        raise ClipeditError(f"class list lacks the data's classes: {', '.join(missing)}")
    return [mapping[label] for label in labels]


def labels_from_names(names: Sequence[str], classnames: Sequence[str]) -> list[int]:
    """Class indices of label ``names``; raises ClipeditError listing names not in ``classnames``."""
    indices = [class_index(n, classnames) for n in names]
    unknown = sorted({n for n, i in zip(names, indices) if i is None})
    if unknown:
        raise ClipeditError(f"labels not in the class list: {', '.join(unknown)}")
    return [int(i) for i in indices]  # type: ignore[arg-type]
