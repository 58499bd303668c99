"""A defense's settings, resolved once: :class:`~clipedit.settings.config.DefenseConfig` (what a defense is
asked to do), the default files as data (``hparams/<method>/{default,families/*,models/*}.json``, each complete
on its own, read by :mod:`~clipedit.settings.defaults`), :func:`~clipedit.settings.resolve.resolve_config` (the
caller's overrides on top of the model's default file: the one resolution the CLI and Python share)."""
