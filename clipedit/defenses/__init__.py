"""Defenses: the method table (``methods``: the rewrite, fine-tuning baselines, peer defenses) and its one
result type (``result``), the typographic defense (``typographic``, ``any_word``), the sweep and selection,
concept edits. Their settings live in :mod:`clipedit.settings`."""
