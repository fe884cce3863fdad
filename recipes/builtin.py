"""Importing this module registers semhooks' built-in recipes."""

from recipes import concept_steering, lexical_layers, pooling_sentiment  # noqa: F401
