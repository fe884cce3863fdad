"""Sparse autoencoder features as concept directions, on any TransformerLens backend.

Load SAEs saved in the SAELens layout (``cfg.json`` + ``sae_weights.safetensors``; standard
ReLU, top-k, JumpReLU and gated architectures) without importing SAELens, so they work on
TransformerLens 4's ``TransformerBridge`` as well as 3.x's ``HookedTransformer``; read their
features from states or live hooks; turn features into hooks (steer, clamp, ablate, splice);
and train a small SAE with :class:`SAETrainer`::

    sae = semhooks.sae.load_sae("path/to/sae_folder")
    with semhooks.intervene(model, feature_steer(sae, 123, alpha=8.0)):
        ...                       # or FeatureClamp(sae, 123, 0.0), Splice(sae, keep_error=False)
"""

from semhooks.sae.config import ARCHITECTURES, SAEConfig, SAEConfigError, parse_config
from semhooks.sae.features import (
    SAEFeatures,
    TopTexts,
    encode_states,
    extract_features,
    iter_features,
    top_texts,
)
from semhooks.sae.hooks import (
    FeatureClamp,
    FeatureRecorder,
    Splice,
    feature_ablate,
    feature_steer,
)
from semhooks.sae.model import SparseAutoencoder, fraction_of_variance_explained, load_sae
from semhooks.sae.trainer import SAETrainer

__all__ = [
    "FeatureClamp",
    "FeatureRecorder",
    "Splice",
    "feature_ablate",
    "feature_steer",
    "ARCHITECTURES",
    "SAEConfig",
    "SAEConfigError",
    "SAETrainer",
    "SAEFeatures",
    "TopTexts",
    "encode_states",
    "extract_features",
    "iter_features",
    "top_texts",
    "SparseAutoencoder",
    "fraction_of_variance_explained",
    "load_sae",
    "parse_config",
]
