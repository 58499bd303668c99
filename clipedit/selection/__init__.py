"""Selection: the experiment drivers that choose and compare defenses by measurement, every method through
the table (``clipedit.methods.registry``), tuned on validation, scored on test.

``sweep`` runs the rewrite over sites x ranks on the validation split and picks a setting; ``compare`` runs
every method over seeds and words and scores them on the same test scenes; ``compare_units`` shares compare's
grid over ``torch.distributed`` ranks. The pick rule they share with the methods that tune themselves is
:mod:`clipedit.eval.pick`.
"""
