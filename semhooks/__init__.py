"""semhooks: TransformerLens hooks and activation-cache analyzers for meaning in language models.

Attach to any TransformerLens model (4.x ``TransformerBridge`` or 3.x ``HookedTransformer``)
and ask where and how it represents meaning: per-layer states, lexical semantics by layer,
vocabulary-defined semantics, linear relational concepts, interventions along directions,
and information emergence.
"""

from semhooks import compat, relations, sae
from semhooks.backend.adapter import ModelAdapter, Tokenized, adapt, cache_dir
from semhooks.backend.hooked import hooked_transformer_from_hf, is_hooked_transformer
from semhooks.backend.loading import load_model
from semhooks.data import loaders as datasets  # the old name of semhooks.data.loaders
from semhooks.data.loaders import (
    TextClassificationDataset,
    WiCItem,
    load_entities,
    load_sentiment,
    load_sst2,
    load_wic,
)
from semhooks.estimators.calibrator import SemanticCalibrator
from semhooks.estimators.directions import MeanDifference, PCADirection, ProbeDirection
from semhooks.estimators.mi import MINE, GaussianMI, InfoNCE
from semhooks.estimators.pooler import AttentionPooler
from semhooks.extraction.distributed import extract_states_distributed, merge_shards
from semhooks.extraction.pooling import pool
from semhooks.extraction.spans import SpanNotFoundError, Spans, char_span, find_span
from semhooks.extraction.states import LayerStates, ShardedStates, extract_states, select_tokens
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
from semhooks.interventions.guards import FiniteGuard, NonFiniteError, guard_finite
from semhooks.io.artifacts import ArtifactError
from semhooks.relations import LRC, LRE, Concept
from semhooks.sae import SAETrainer, SparseAutoencoder, load_sae
from semhooks.studies.calibration import calibration_study
from semhooks.studies.emergence import EmergenceResult, entity_lists, information_emergence
from semhooks.studies.lexical import WiCResult, wic_study
from semhooks.studies.patching import (
    PatchingResult,
    activation_patching,
    attribution_patching,
    concept_patching,
)
from semhooks.studies.probing import PoolingResult, pooling_study
from semhooks.studies.steering import SteeringCurve, generate, steering_curve
from semhooks.studies.vocab import semantic_basis, semantic_logits, vocab_lens
from semhooks.version import __version__ as __version__

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
    "PatchingResult",
    "activation_patching",
    "attribution_patching",
    "concept_patching",
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
    "sae",
    "SAETrainer",
    "SparseAutoencoder",
    "load_sae",
    "select_tokens",
    "steering_curve",
    "wic_study",
]

# Old flat module paths (semhooks.states, semhooks.model, ...) stay importable, deprecated.
compat.install()


def __getattr__(name: str):
    """``semhooks.states`` and the other old submodule attributes, through :mod:`semhooks.compat`."""
    if f"{__name__}.{name}" in compat.MOVED_MODULES:
        import importlib

        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
