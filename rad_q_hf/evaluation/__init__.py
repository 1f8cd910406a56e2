"""The papers' evaluation protocol: metrics, judges, shipped prompts and the resumable `rad-q evaluate` runner."""

from .config import TASKS, EvaluationConfig, EvaluationError, Setting
from .judges import JudgeError, fluency_judge, sentiment_judge, toxicity_judge
from .metrics import (
    conditional_perplexity,
    distinct_n,
    perplexity_metrics,
    sentiment_metrics,
    sequence_nll,
    toxicity_metrics,
)
from .prompts import SHIPPED_PROMPTS, load_prompts
from .runner import run_evaluation

__all__ = [
    "EvaluationConfig",
    "EvaluationError",
    "JudgeError",
    "SHIPPED_PROMPTS",
    "TASKS",
    "Setting",
    "conditional_perplexity",
    "distinct_n",
    "fluency_judge",
    "load_prompts",
    "perplexity_metrics",
    "run_evaluation",
    "sentiment_judge",
    "sentiment_metrics",
    "sequence_nll",
    "toxicity_judge",
    "toxicity_metrics",
]
