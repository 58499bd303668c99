"""Evaluation: zero-shot heads, predictors, metrics, attack sets, the held-out protocol, results records."""
