"""The extraction wing: activations out of a model, one road.

- :mod:`~semhooks.extraction.reader`: the one activation reader (batch -> hooks -> chosen
  sites, rows and positions, pooled or raw, with or without grad; stops after the deepest layer).
- :mod:`~semhooks.extraction.spans`: substrings -> token positions through character offsets.
- :mod:`~semhooks.extraction.pooling`: mask-aware pooling functions.
- :mod:`~semhooks.extraction.states`: :class:`LayerStates` and :func:`extract_states`.
- :mod:`~semhooks.extraction.shards`: :class:`ShardedStates`, streaming and resume.
- :mod:`~semhooks.extraction.distributed`: data-parallel extraction over shards.
"""
