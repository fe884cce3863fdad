"""Relations (Hernandez et al. 2023): the bundled dataset, and (in sibling modules) prompts,
linear relational embeddings and linear relational concepts."""

from semhooks.relations.data import (
    CATEGORIES,
    Relation,
    RelationSample,
    UnknownRelationError,
    list_relations,
    load,
)

__all__ = [
    "CATEGORIES",
    "Relation",
    "RelationSample",
    "UnknownRelationError",
    "list_relations",
    "load",
]
