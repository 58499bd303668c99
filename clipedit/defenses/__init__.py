"""Defenses: ``defend()`` from settings to saved files. Its settings (``config``, ``resolve``: defaults as data
in ``defaults.json``; ``arguments``: the checks of its Python arguments), its entry (``typographic``: exemplars
built, a method of the table run, the effect measured), the files of a run (``run_files``: ``save_run``), and
concept edits of classifiers (``concept``). The methods are in ``clipedit.methods``, the drivers that choose
and compare them in ``clipedit.selection``."""
