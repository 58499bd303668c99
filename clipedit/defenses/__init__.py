"""Defenses: ``defend()`` from settings to saved files: its entry (``typographic``: exemplars built, a method of
the table run, the effect measured), the files of a run (``run_files``: ``save_run``), and concept edits of
classifiers (``concept``). Their settings live in :mod:`clipedit.settings`, the methods in
:mod:`clipedit.methods`, the drivers that choose and compare them in :mod:`clipedit.selection`."""
