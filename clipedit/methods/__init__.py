"""Methods: one module each and one entry in the table (``registry.METHODS``, after ROME's ``ALG_DICT``).

``spec`` says what a method is (:class:`~clipedit.methods.spec.MethodSpec`), what every run receives (its data
and context) and returns (:class:`~clipedit.methods.spec.DefenseResult`, its budget); ``registry`` holds the
table and its one dispatcher (``run_defense``). One module per method: ``rewrite`` (the rank-r rewrite,
``edit``), ``any_word`` (the same rewrite against any written word, ``edit-any-word``), ``finetune`` (the
paper's baselines), ``head_ablation``, ``dyslexify``, ``paint`` and ``defense_prefix`` (the peers).
"""
