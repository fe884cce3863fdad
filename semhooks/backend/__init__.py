"""The backend wing: the only place that knows TransformerLens and transformers versions.

- :mod:`~semhooks.backend.adapter`: :class:`ModelAdapter` over TransformerLens 4.x
  ``TransformerBridge`` and 3.x ``HookedTransformer`` (sites -> hook names, W_U / final norm,
  tokenization with offsets, KV prefix cache, generation).
- :mod:`~semhooks.backend.hooked`: TransformerLens 3.x ``HookedTransformer`` specifics.
- :mod:`~semhooks.backend.loading`: :func:`load_model`, the offline models, the cache folder.
"""
