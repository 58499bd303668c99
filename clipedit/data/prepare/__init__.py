"""Data preparation: what a defense learns from, tunes on and is scored on, prepared for one model.

``exemplars`` (rendered attacks and reference images drawn from the model's world, and exemplars as the
rewrite core's requests), ``vocabulary`` (the words ``defend --text '*'`` renders), ``typo_train`` (the
typographic training and validation splits the word-agnostic peers share), ``user_data`` (a user's labelled
data as a world and its scoring sets) and ``word_split`` (a comparison's word-disjoint split). It sits above
``models``/``eval`` (it preprocesses for a model, scores with a predictor) and below ``methods``.
"""
