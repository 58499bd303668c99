"""Bundled models (installed as the package data ``clipedit.assets``): ``mini/`` is the mini CLIP."""
