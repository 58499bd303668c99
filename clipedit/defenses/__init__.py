"""Defenses: the typographic defense, concept edits, fine-tuning baselines, the method dispatcher, defaults as data."""
