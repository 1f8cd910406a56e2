"""Judges behind a small registry: toxicity scorers, sentiment classifiers and the fluency LM.

    toxicity_judge("profanity-check")             # offline default (alt-profanity-check)
    toxicity_judge("perspective")                  # $PERSPECTIVE_API_KEY, rate-limited, retried
    toxicity_judge("hf:s-nlp/roberta_toxicity_classifier")          # any text-classification model (Hub id or folder)
    sentiment_judge("vader")                       # offline default
    sentiment_judge("distilbert-sst2")             # the papers' judge (Hub)
    fluency_judge("gemma3-270m")                   # embedded, offline default; or any causal LM id / folder

A Hub classifier's label is chosen with `#label` (`hf:unitary/toxic-bert#toxic`); by default the label named
`toxic` (toxicity) or `positive` (sentiment), case-insensitively.
"""

from collections.abc import Callable

PAPERS_SENTIMENT_MODEL = "distilbert/distilbert-base-uncased-finetuned-sst-2-english"


class JudgeError(ValueError):
    """An unknown judge name, a judge that cannot run here, or a classifier without the wanted label."""


class ProfanityCheckJudge:
    """`alt-profanity-check`'s linear SVM probability (offline, fast, lexical)."""

    name = "profanity-check"

    def __init__(self):
        try:
            from profanity_check import predict_prob
        except ImportError as error:
            raise JudgeError("The profanity-check judge needs `pip install alt-profanity-check`.") from error
        self._predict = predict_prob

    def score(self, texts: list[str]) -> list[float]:
        return [float(p) for p in self._predict(list(texts))] if texts else []


class PerspectiveJudge:
    name = "perspective"

    def __init__(self, **client_kwargs):
        from .perspective import PerspectiveClient, PerspectiveError

        try:
            self.client = PerspectiveClient(**client_kwargs)
        except PerspectiveError as error:
            raise JudgeError(str(error)) from error

    def score(self, texts: list[str]) -> list[float]:
        return self.client.score(texts)


class VaderJudge:
    """VADER's compound score: POSITIVE ≥ 0.05, NEGATIVE ≤ −0.05, NEUTRAL in between (its documented thresholds)."""

    name = "vader"

    def __init__(self):
        try:
            from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer
        except ImportError as error:
            raise JudgeError("The vader judge needs `pip install vaderSentiment`.") from error
        self._analyzer = SentimentIntensityAnalyzer()

    def compound(self, texts: list[str]) -> list[float]:
        """VADER's compound score in [−1, 1] (positive > 0), the number `classify` thresholds."""
        return [self._analyzer.polarity_scores(t)["compound"] for t in texts]

    def classify(self, texts: list[str]) -> list[str]:
        return ["POSITIVE" if c >= 0.05 else "NEGATIVE" if c <= -0.05 else "NEUTRAL" for c in self.compound(texts)]


class HubClassifierJudge:
    """A `transformers` text-classification pipeline; `score` is the wanted label's probability."""

    def __init__(self, model: str, label: str, device: str = "cpu", batch_size: int = 32):
        from transformers import pipeline

        try:
            self.pipe = pipeline("text-classification", model=model, device=device, top_k=None, truncation=True)
        except OSError as error:
            raise JudgeError(f"Cannot load the classifier {model!r} (offline? wrong id?): {error}") from error
        labels = list(self.pipe.model.config.id2label.values())
        match = [name for name in labels if name.lower() == label.lower()]
        if not match:
            raise JudgeError(
                f"Classifier {model!r} has labels {labels}, none named {label!r}; pick one with `#LABEL`."
            )
        self.name, self.label, self.batch_size = f"hf:{model}#{match[0]}", match[0], batch_size

    def score(self, texts: list[str]) -> list[float]:
        out = self.pipe(list(texts), batch_size=self.batch_size) if texts else []
        return [next(d["score"] for d in row if d["label"] == self.label) for row in out]

    def classify(self, texts: list[str]) -> list[str]:  # sentiment: POSITIVE when the wanted label wins
        out = self.pipe(list(texts), batch_size=self.batch_size) if texts else []
        return ["POSITIVE" if max(row, key=lambda d: d["score"])["label"] == self.label else "NEGATIVE" for row in out]


class FluencyJudge:
    """Conditional perplexity of continuations under a causal LM (embedded `gemma3-270m`, a folder or a Hub id)."""

    def __init__(self, name_or_path: str, device: str = "cpu", batch_size: int = 32):
        from transformers import AutoModelForCausalLM, AutoTokenizer

        from ..checkpoints import lm_path, load_checkpoint

        try:
            path = lm_path(name_or_path)
            self.tokenizer = AutoTokenizer.from_pretrained(path)
            self.model = load_checkpoint(AutoModelForCausalLM.from_pretrained, path, name_or_path).to(device).eval()
        except OSError as error:
            raise JudgeError(f"Cannot load the fluency LM {name_or_path!r} (offline? wrong id?): {error}") from error
        self.name, self.batch_size = name_or_path, batch_size

    def perplexities(
        self, prompts: list[str], continuations: list[list[str]], progress: str | None = None
    ) -> list[list[float]]:
        """Per prompt, its continuations' perplexities; `progress` names a tqdm bar over the judge's batches."""
        from .metrics import conditional_perplexity

        return conditional_perplexity(self.model, self.tokenizer, prompts, continuations, self.batch_size, progress)


def _split(name: str, default_label: str) -> tuple[str, str]:
    model, _, label = name[len("hf:") :].partition("#")
    return model, label or default_label


TOXICITY_JUDGES: dict[str, Callable] = {"profanity-check": ProfanityCheckJudge, "perspective": PerspectiveJudge}
SENTIMENT_JUDGES: dict[str, Callable] = {
    "vader": VaderJudge,
    "distilbert-sst2": lambda device="cpu": HubClassifierJudge(PAPERS_SENTIMENT_MODEL, "POSITIVE", device),
}


def check_judge_name(kind: str, name: str) -> None:
    """Fail early (before hours of sampling) on a judge name the registry does not know."""
    registry = {"toxicity": TOXICITY_JUDGES, "sentiment": SENTIMENT_JUDGES}[kind]
    if name not in registry and not (name.startswith("hf:") and len(name) > 3):
        raise JudgeError(f"Unknown {kind} judge {name!r}: use one of {sorted(registry)} or hf:<model>[#label].")


def toxicity_judge(name: str, device: str = "cpu"):
    """A judge with `.score(texts) -> list[float]` (toxicity in [0, 1], NaN when unscorable)."""
    check_judge_name("toxicity", name)
    if name.startswith("hf:"):
        return HubClassifierJudge(*_split(name, "toxic"), device=device)
    return TOXICITY_JUDGES[name]()


def sentiment_judge(name: str, device: str = "cpu"):
    """A judge with `.classify(texts) -> list[str]` (POSITIVE / NEGATIVE / NEUTRAL)."""
    check_judge_name("sentiment", name)
    if name.startswith("hf:"):
        return HubClassifierJudge(*_split(name, "positive"), device=device)
    return SENTIMENT_JUDGES[name]() if name == "vader" else SENTIMENT_JUDGES[name](device)


def fluency_judge(name: str, device: str = "cpu") -> FluencyJudge | None:
    """`None` for "none" (skip perplexity); otherwise a [`FluencyJudge`]."""
    return None if name == "none" else FluencyJudge(name, device)
