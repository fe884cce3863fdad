"""License and attribution of every bundled dataset (:data:`DATA_LICENSES`)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType


@dataclass(frozen=True)
class DataLicense:
    """License and attribution of one bundled dataset.

    Attributes:
        dataset: key in :data:`DATA_LICENSES`.
        license: the license, e.g. ``"CC BY-NC 4.0"``.
        attribution: whom to credit (paper and authors).
        source: where the files come from.
        notice: path of the notice/license file, relative to ``semhooks/data``.
        commercial_use: False when the license forbids commercial use.
    """

    dataset: str
    license: str
    attribution: str
    source: str
    notice: str
    commercial_use: bool


DATA_LICENSES: Mapping[str, DataLicense] = MappingProxyType(
    {
        "relations": DataLicense(
            dataset="relations",
            license="MIT (Copyright (c) 2022 Evan Hernandez)",
            attribution=(
                "Hernandez et al. 2023, 'Linearity of Relation Decoding in Transformer "
                "Language Models'"
            ),
            source="https://github.com/evandez/relations",
            notice="relations/LICENSE",
            commercial_use=True,
        ),
        "wic": DataLicense(
            dataset="wic",
            license="CC BY-NC 4.0",
            attribution=(
                "Pilehvar & Camacho-Collados, 'WiC: the Word-in-Context Dataset for "
                "Evaluating Context-Sensitive Meaning Representations', NAACL 2019"
            ),
            source="https://pilehvar.github.io/wic/ (WiC v1.0)",
            notice="wic/NOTICE",
            commercial_use=False,
        ),
        "sst2": DataLicense(
            dataset="sst2",
            license="no explicit license; customary non-commercial research use",
            attribution=(
                "Socher et al., 'Recursive Deep Models for Semantic Compositionality Over a "
                "Sentiment Treebank', EMNLP 2013; distributed in GLUE (Wang et al., ICLR 2019)"
            ),
            source="GLUE SST-2 (dev split; seeded balanced 6,000-row sample of train)",
            notice="sst2/NOTICE",
            commercial_use=False,
        ),
        "sentiment": DataLicense(
            dataset="sentiment",
            license="CC BY 4.0",
            attribution=(
                "Kotzias, Denil, de Freitas & Smyth, 'From Group to Individual Labels using "
                "Deep Features', KDD 2015"
            ),
            source="UCI Machine Learning Repository, 'Sentiment Labelled Sentences'",
            notice="sentiment/NOTICE",
            commercial_use=True,
        ),
        "entities": DataLicense(
            dataset="entities",
            license="public domain (CC0 1.0)",
            attribution="written for semhooks",
            source="semhooks",
            notice="entities.txt",
            commercial_use=True,
        ),
    }
)
