"""Loaders for the datasets bundled in ``semhooks/data`` (pure Python + numpy, no model code).

- :func:`load_wic`: WiC word-in-context pairs (Pilehvar & Camacho-Collados 2019), with the
  character span of the target word in each sentence, for the layer-wise lexical-semantics
  study of Liu et al. 2024 (METHODS.md section 2).
- :func:`load_sst2`, :func:`load_sentiment`: binary sentiment sets (GLUE SST-2, UCI Sentiment
  Labelled Sentences) as a :class:`TextClassificationDataset`, for pooling/probe studies
  (METHODS.md section 3) and vocabulary-defined calibration (section 4).
- :func:`load_entities`: a short list of common nouns for in-context item lists
  (information emergence, section 7).
- :data:`DATA_LICENSES`: what each bundled dataset may be used for and whom to credit.

The relation dataset of Hernandez et al. 2023 is loaded by :mod:`semhooks.relations`.

Every loader reads the files shipped inside the package through :mod:`importlib.resources`;
user files of the same formats are accepted wherever a path is. One module per dataset
(:mod:`~semhooks.data.wic`, :mod:`~semhooks.data.sentiment`, :mod:`~semhooks.data.licenses`);
their public names are re-exported here.
"""

from __future__ import annotations

from semhooks.data.licenses import DATA_LICENSES, DataLicense
from semhooks.data.lines import read_lines
from semhooks.data.sentiment import (
    SENTIMENT_DATASETS,
    TextClassificationDataset,
    load_sentiment,
    load_sst2,
)
from semhooks.data.wic import WiCItem, load_wic

__all__ = [
    "DATA_LICENSES",
    "DataLicense",
    "SENTIMENT_DATASETS",
    "TextClassificationDataset",
    "WiCItem",
    "load_entities",
    "load_sentiment",
    "load_sst2",
    "load_wic",
]


def load_entities() -> list[str]:
    """Sixty common single-word English nouns (30 animals, then 30 everyday objects), e.g.
    ``"Ant"``, ``"Bat"``, ``"Fox"``: items for in-context lists. Public domain (CC0)."""
    _, lines = read_lines(None, "entities.txt")
    return [line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]
