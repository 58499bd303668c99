"""Evaluation: zero-shot heads, predictors, metrics, attack sets, the held-out protocol, results records, and
the pick rule every tuned method and driver shares (``pick``)."""
