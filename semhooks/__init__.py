"""semhooks: TransformerLens hooks and activation-cache analyzers for meaning in language models.

Attach to any TransformerLens model (4.x ``TransformerBridge`` or 3.x ``HookedTransformer``)
and ask where and how it represents meaning: per-layer states, lexical semantics by layer,
vocabulary-defined semantics, linear relational concepts, interventions along directions,
and information emergence.
"""

__version__ = "0.1.0"

from semhooks import datasets, relations
from semhooks.artifacts import ArtifactError
from semhooks.calibration import SemanticCalibrator, calibration_study
from semhooks.datasets import (
    TextClassificationDataset,
    WiCItem,
    load_entities,
    load_sentiment,
    load_sst2,
    load_wic,
)
from semhooks.directions import MeanDifference, PCADirection, ProbeDirection
from semhooks.distributed import extract_states_distributed, merge_shards
from semhooks.emergence import EmergenceResult, entity_lists, information_emergence
from semhooks.guards import FiniteGuard, NonFiniteError, guard_finite
from semhooks.hooked import hooked_transformer_from_hf, is_hooked_transformer
from semhooks.interventions import (
    Ablate,
    Clamp,
    Intervention,
    InterventionError,
    Patch,
    Steer,
    Swap,
    intervene,
    placebo,
    random_control,
)
from semhooks.lexical import WiCResult, wic_study
from semhooks.mi import MINE, GaussianMI, InfoNCE
from semhooks.model import ModelAdapter, Tokenized, adapt, cache_dir, load_model
from semhooks.pooling import AttentionPooler, pool
from semhooks.probing import PoolingResult, pooling_study
from semhooks.relations import LRC, LRE, Concept
from semhooks.spans import SpanNotFoundError, Spans, char_span, find_span
from semhooks.states import LayerStates, ShardedStates, extract_states, select_tokens
from semhooks.steering import SteeringCurve, generate, steering_curve
from semhooks.vocab import semantic_basis, semantic_logits, vocab_lens

__all__ = [
    "LRC",
    "LRE",
    "MINE",
    "Concept",
    "EmergenceResult",
    "FiniteGuard",
    "GaussianMI",
    "InfoNCE",
    "NonFiniteError",
    "SemanticCalibrator",
    "calibration_study",
    "entity_lists",
    "extract_states_distributed",
    "guard_finite",
    "information_emergence",
    "merge_shards",
    "semantic_basis",
    "semantic_logits",
    "vocab_lens",
    "Ablate",
    "ArtifactError",
    "AttentionPooler",
    "Clamp",
    "Intervention",
    "InterventionError",
    "LayerStates",
    "MeanDifference",
    "ModelAdapter",
    "PCADirection",
    "Patch",
    "PoolingResult",
    "ProbeDirection",
    "ShardedStates",
    "SpanNotFoundError",
    "Spans",
    "Steer",
    "SteeringCurve",
    "Swap",
    "TextClassificationDataset",
    "Tokenized",
    "WiCItem",
    "WiCResult",
    "adapt",
    "cache_dir",
    "char_span",
    "datasets",
    "extract_states",
    "find_span",
    "generate",
    "hooked_transformer_from_hf",
    "intervene",
    "is_hooked_transformer",
    "load_entities",
    "load_model",
    "load_sentiment",
    "load_sst2",
    "load_wic",
    "placebo",
    "pool",
    "pooling_study",
    "random_control",
    "relations",
    "select_tokens",
    "steering_curve",
    "wic_study",
]
