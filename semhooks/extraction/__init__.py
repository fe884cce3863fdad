"""The extraction wing: activations out of a model, one road.

- :mod:`~semhooks.extraction.reader`: the one activation reader (batch -> hooks -> chosen
  sites, rows and positions, pooled or raw, with or without grad; stops after the deepest layer).
- :mod:`~semhooks.extraction.selection`: which tokens of each row to read.
- :mod:`~semhooks.extraction.spans`: substrings -> token positions through character offsets.
- :mod:`~semhooks.extraction.pooling`: mask-aware pooling functions.
- :mod:`~semhooks.extraction.layer_states`: :class:`LayerStates` (+ ``from_cache``) and its I/O.
- :mod:`~semhooks.extraction.plan`: :class:`ExtractionPlan` (one validated request) and its run.
- :mod:`~semhooks.extraction.states`: :func:`extract_states` (and the public names above).
- :mod:`~semhooks.extraction.shards`: :class:`ShardedStates`, streaming and resume.
- :mod:`~semhooks.extraction.distributed`: data-parallel extraction over shards.
"""
