"""semhooks: TransformerLens hooks and activation-cache analyzers for meaning in language models.

Attach to any TransformerLens model (4.x ``TransformerBridge`` or 3.x ``HookedTransformer``)
and ask where and how it represents meaning: per-layer states, lexical semantics by layer,
vocabulary-defined semantics, linear relational concepts, interventions along directions,
and information emergence.
"""

__version__ = "0.1.0"

from semhooks.artifacts import ArtifactError
from semhooks.model import ModelAdapter, Tokenized, adapt, cache_dir, load_model
from semhooks.pooling import AttentionPooler, pool
from semhooks.spans import SpanNotFoundError, Spans, char_span, find_span
from semhooks.states import LayerStates, ShardedStates, extract_states, select_tokens

__all__ = [
    "ArtifactError",
    "AttentionPooler",
    "LayerStates",
    "ModelAdapter",
    "ShardedStates",
    "SpanNotFoundError",
    "Spans",
    "Tokenized",
    "adapt",
    "cache_dir",
    "char_span",
    "extract_states",
    "find_span",
    "load_model",
    "pool",
    "select_tokens",
]
