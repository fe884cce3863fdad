"""The backend wing: the only place that knows TransformerLens and transformers versions.

- :mod:`~semhooks.backend.adapter`: :class:`ModelAdapter` over TransformerLens 4.x
  ``TransformerBridge`` and 3.x ``HookedTransformer`` (W_U / final norm, logit lens, forwards,
  hook gating and order), and :func:`adapt`.
- :mod:`~semhooks.backend.sites`: sites -> hook names (TransformerLens' ``get_act_name``) and
  the one hook-name parser, for both naming styles.
- :mod:`~semhooks.backend.tokens`: tokenization with character offsets, BOS, masks.
- :mod:`~semhooks.backend.kv`: the KV prefix cache on either backend.
- :mod:`~semhooks.backend.hooks`: hook lifetime (one thread at a time), early stop, counts.
- :mod:`~semhooks.backend.state`: what semhooks remembers about a model, in a weak dictionary
  (nothing is written onto the model object).
- :mod:`~semhooks.backend.hooked`: TransformerLens 3.x ``HookedTransformer`` specifics.
- :mod:`~semhooks.backend.loading`: :func:`load_model`; :mod:`~semhooks.backend.offline`:
  the offline models' names and the cache folder.
"""
