"""Importing this module registers semhooks' built-in recipes."""

from recipes import (  # noqa: F401
    concept_steering,
    emergence_profile,
    lexical_layers,
    patching,
    pooling_sentiment,
    quickstart,
    relation_concepts,
    vocab_calibration,
)
