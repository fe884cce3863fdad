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

# Prompts, validation, splits, Jacobians, LREs and LRCs.
from semhooks.relations.jacobian import (  # noqa: E402
    JacobianResult,
    LowRankJacobian,
    mean_jacobian,
    principal_angles,
    prompt_jacobian,
    randomized_jacobian,
    reference_jacobian,
)
from semhooks.relations.lre import LRE, NotFittedError  # noqa: E402
from semhooks.relations.prompts import (  # noqa: E402
    EncodedPrompts,
    NoValidPromptsError,
    PromptStates,
    RelationPrompt,
    ValidationReport,
    build_prompts,
    encode_prompts,
    prompt_states,
    validate,
)
from semhooks.relations.splits import balanced_subset, split  # noqa: E402

__all__ += [
    "EncodedPrompts",
    "JacobianResult",
    "LRE",
    "LowRankJacobian",
    "NoValidPromptsError",
    "NotFittedError",
    "PromptStates",
    "RelationPrompt",
    "ValidationReport",
    "balanced_subset",
    "build_prompts",
    "encode_prompts",
    "mean_jacobian",
    "principal_angles",
    "prompt_jacobian",
    "prompt_states",
    "randomized_jacobian",
    "reference_jacobian",
    "split",
    "validate",
]

from semhooks.relations.evaluation import (  # noqa: E402
    Baseline,
    CausalityResult,
    FaithfulnessResult,
    RelationEvaluation,
    SwapResult,
    SweepResult,
    causal_swap,
    evaluate_relation,
    evaluate_relations,
    faithfulness,
    fit_baselines,
    hernandez_causality,
    sweep,
    table_markdown,
)
from semhooks.relations.lrc import LRC, Concept  # noqa: E402

__all__ += [
    "LRC",
    "Baseline",
    "CausalityResult",
    "Concept",
    "FaithfulnessResult",
    "RelationEvaluation",
    "SwapResult",
    "SweepResult",
    "causal_swap",
    "evaluate_relation",
    "evaluate_relations",
    "faithfulness",
    "fit_baselines",
    "hernandez_causality",
    "sweep",
    "table_markdown",
]
