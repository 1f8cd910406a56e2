"""`rad-q evaluate`: sample continuations (resumable, sharded over processes), score them with the judges, report.

Layout of an output folder:

    config.json                       the run's settings and model fingerprints; a re-run must agree on everything
                                      that shapes the samples
    generations/<setting>/part-<rank>.jsonl   appended one prompt batch at a time as generation goes
    generations/<setting>.jsonl       all prompts of a setting, merged in prompt order
    scores/<setting>.json             per-sample judge outputs (reused while the judges stay the same)
    results.json, results.md          metrics per setting; tradeoff_*.png with several β

Prompts are cut into fixed batches of `prompts_per_batch`; batch b is sampled with its own seed and handled by
process b mod world_size, so a run's samples do not depend on the number of processes, nor on where a previous
run was interrupted.
"""

import hashlib
import json
import math
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from tqdm.auto import tqdm

from .judges import check_judge_name
from .metrics import (
    distinct_n,
    paired_difference,
    perplexity_metrics,
    prompt_maxima,
    prompt_positive_fractions,
    regroup,
    sentiment_metrics,
    toxicity_metrics,
)
from .perspective import API_KEY_ENV
from .prompts import DEFAULT_PROMPTS, load_prompts

# task -> (shipped reward model per method, label, direction); `rad-q generate` uses the same table
TASKS = {
    "detox": ({"rad-q": "rad-q-toxicity", "rad-v": "rad-v-toxicity"}, 0, "minimize"),
    "positive": ({"rad-q": "rad-q-sentiment", "rad-v": "rad-v-sentiment"}, 0, "maximize"),
    "negative": ({"rad-q": "rad-q-sentiment", "rad-v": "rad-v-sentiment"}, 0, "minimize"),
}
METHODS = ("none", "rad-q", "rad-v")
# fields that shape the samples: a re-run into the same folder must keep them (num_prompts may grow, β may be added)
_SAMPLING_FIELDS = ("task", "samples_per_prompt", "max_new_tokens", "top_k", "prompts", "lm", "rad_q_model",
                    "rad_v_model", "prompts_per_batch", "seed")  # fmt: skip


class EvaluationError(ValueError):
    """A run that cannot go on as configured (conflicting resume, missing prompts, wrong reward model)."""


@dataclass
class EvaluationConfig:
    """One evaluation run: every (method, β) setting on the same prompts, seeds and judges.

    Example:

    ```python
    >>> config = EvaluationConfig(task="detox", methods=("none", "rad-q"), betas=(10.0, 50.0), num_prompts=2)
    >>> [s.name for s in config.settings()]
    ['none', 'rad-q_b10', 'rad-q_b50']

    ```
    """

    task: str = field(default="detox", metadata={"help": "detox | positive | negative."})
    methods: tuple[str, ...] = field(default=("none", "rad-q", "rad-v"), metadata={"help": "Methods to run."})
    betas: tuple[float, ...] = field(default=(10.0,), metadata={"help": "β values for the guided methods."})
    num_prompts: int = field(default=100, metadata={"help": "The first N prompts of the set."})
    samples_per_prompt: int = field(default=25, metadata={"help": "Continuations sampled per prompt."})
    max_new_tokens: int = field(default=20, metadata={"help": "Tokens per continuation."})
    top_k: int = field(default=20, metadata={"help": "Top-k sampling (the RAD candidate set; unguided too)."})
    prompts: str | None = field(default=None, metadata={"help": "Shipped set name or JSONL (default by task)."})
    lm: str = field(default="smollm2-135m", metadata={"help": "The steered LM: embedded name, folder or Hub id."})
    rad_q_model: str | None = field(default=None, metadata={"help": "RAD-Q reward model (default: shipped)."})
    rad_v_model: str | None = field(default=None, metadata={"help": "RAD-V reward model (default: shipped)."})
    toxicity_judge: str = field(default="profanity-check", metadata={"help": "See rad_q_hf.evaluation.judges."})
    sentiment_judge: str = field(default="vader", metadata={"help": "See rad_q_hf.evaluation.judges."})
    fluency_lm: str = field(default="gemma3-270m", metadata={"help": "Perplexity judge LM, or `none`."})
    prompts_per_batch: int = field(default=4, metadata={"help": "Prompts per generate call (× samples rows)."})
    seed: int = field(default=0, metadata={"help": "Base seed; batch b uses seed · 1000003 + b."})
    device: str = field(default="cpu", metadata={"help": "cpu | cuda."})
    output: str = field(default="outputs/evaluate", metadata={"help": "Output folder (re-runs resume in it)."})

    def __post_init__(self):
        if self.task not in TASKS:
            raise EvaluationError(f"Unknown task {self.task!r}: use one of {sorted(TASKS)}.")
        unknown = [m for m in self.methods if m not in METHODS]
        if unknown or not self.methods:
            raise EvaluationError(f"Unknown method(s) {unknown}: use some of {list(METHODS)}.")
        for name in ("num_prompts", "samples_per_prompt", "max_new_tokens", "top_k", "prompts_per_batch"):
            if getattr(self, name) < 1:
                raise EvaluationError(f"`{name}` must be ≥ 1, got {getattr(self, name)}.")
        if any(m != "none" for m in self.methods) and not self.betas:
            raise EvaluationError("Guided methods need at least one β.")
        self.prompts = self.prompts or DEFAULT_PROMPTS[self.task]
        if self.task == "detox":
            check_judge_name("toxicity", self.toxicity_judge)
            if self.toxicity_judge == "perspective" and not os.environ.get(API_KEY_ENV):
                raise EvaluationError(f"--toxicity-judge perspective needs ${API_KEY_ENV}.")
        else:
            check_judge_name("sentiment", self.sentiment_judge)

    def settings(self) -> list["Setting"]:
        out = [Setting("none", 0.0)] if "none" in self.methods else []
        return out + [Setting(m, float(b)) for m in self.methods if m != "none" for b in self.betas]

    def reward_model_name(self, method: str) -> str:
        return getattr(self, f"{method.replace('-', '_')}_model") or TASKS[self.task][0][method]


@dataclass(frozen=True)
class Setting:
    method: str
    beta: float

    @property
    def name(self) -> str:
        return "none" if self.method == "none" else f"{self.method}_b{self.beta:g}"


def load_reward_model(name: str, method: str, device: str = "cpu"):
    """A shipped reward model by name (assembled offline), or a folder / Hub id; checked against `method`."""
    from transformers import AutoModel

    from ..checkpoints import default_checkpoint, shipped_models

    path = default_checkpoint(name) if name in shipped_models() else name
    model = AutoModel.from_pretrained(path).to(device).eval()
    kind = {"rad_q": "rad-q", "rad_v": "rad-v"}.get(model.config.model_type)
    if kind != method:
        raise EvaluationError(
            f"Reward model {name} is a {model.config.model_type} model; it does not fit --method {method}."
        )
    return model


# ----------------------------------------------------------------------------------------------------------------------
# generation


def read_rows(path: Path, repair: bool = False) -> list[dict]:
    """The complete JSON lines of an appended file; a torn last line (an interrupted write) is dropped (and cut off
    the file with `repair=True`, before appending to it again)."""
    if not path.exists():
        return []
    data = path.read_bytes()
    complete = data[: data.rfind(b"\n") + 1]
    if repair and len(complete) < len(data):
        with open(path, "r+b") as f:
            f.truncate(len(complete))
    rows = []
    for number, line in enumerate(complete.decode("utf-8").splitlines(), 1):
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError as error:
            raise EvaluationError(
                f"{path}, line {number} is corrupt ({error}); delete the file to redo it."
            ) from error
    return rows


def _batches(num_prompts: int, size: int) -> list[range]:
    return [range(start, min(start + size, num_prompts)) for start in range(0, num_prompts, size)]


def generate_setting(setting: Setting, prompts: list[str], lm, tokenizer, reward_model, config: EvaluationConfig,
                     state, on_batch=None) -> None:  # fmt: skip
    """Sample this process's share of the prompt batches not already on disk, appending each batch when done."""
    from ..decoding import RADQ, RADV

    folder = Path(config.output) / "generations" / setting.name
    done = _done(config, setting)
    part = folder / f"part-{state.process_index}.jsonl"
    read_rows(part, repair=True)
    batches = list(enumerate(_batches(len(prompts), config.prompts_per_batch)))
    todo = [(b, idx) for b, idx in batches[state.process_index :: state.num_processes] if not set(idx) <= done]
    _, label, direction = TASKS[config.task]
    S = config.samples_per_prompt
    for b, idx in tqdm(todo, desc=setting.name, disable=not state.is_main_process, unit="batch"):
        enc = tokenizer([prompts[i] for i in idx], return_tensors="pt", padding=True).to(lm.device)  # left padded
        processors = []
        if setting.method != "none":
            cls = RADQ if setting.method == "rad-q" else RADV
            processors = [cls(reward_model, beta=setting.beta, top_k=config.top_k, label=label, direction=direction,
                              attention_mask=enc["attention_mask"], tokenizer=tokenizer)]  # fmt: skip
        torch.manual_seed(config.seed * 1_000_003 + b)
        start = time.perf_counter()
        with torch.no_grad():
            out = lm.generate(**enc, do_sample=True, top_k=config.top_k, top_p=1.0, temperature=1.0,
                              max_new_tokens=config.max_new_tokens, num_return_sequences=S,
                              logits_processor=processors, pad_token_id=tokenizer.pad_token_id)  # fmt: skip
        seconds = time.perf_counter() - start
        texts = tokenizer.batch_decode(out[:, enc["input_ids"].shape[1] :], skip_special_tokens=True)  # (B·S,)
        lines = [
            json.dumps({"index": i, "prompt": prompts[i], "continuations": texts[j * S : (j + 1) * S],
                        "seconds": seconds / len(idx)}, ensure_ascii=False) + "\n"
            for j, i in enumerate(idx) if i not in done
        ]  # fmt: skip
        folder.mkdir(parents=True, exist_ok=True)
        with open(part, "a", encoding="utf-8") as f:  # one write per batch: an interruption loses at most this batch
            f.write("".join(lines))
            f.flush()
            os.fsync(f.fileno())
        if on_batch is not None:
            on_batch(setting, b)


def _on_disk(output: str, setting: Setting) -> dict[int, dict]:
    """Prompt index -> its row, over every process's part file of a setting (complete lines only)."""
    rows = {}
    for part in sorted((Path(output) / "generations" / setting.name).glob("part-*.jsonl")):
        for row in read_rows(part):
            rows.setdefault(row["index"], row)
    return rows


def merge_generations(setting: Setting, num_prompts: int, output: str) -> list[dict]:
    rows = _on_disk(output, setting)
    missing = [i for i in range(num_prompts) if i not in rows]
    if missing:
        raise EvaluationError(f"{setting.name}: prompts {missing[:10]} have no samples (a process failed?); re-run.")
    merged = [rows[i] for i in range(num_prompts)]
    text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in merged)
    (Path(output) / "generations" / f"{setting.name}.jsonl").write_text(text, encoding="utf-8")
    return merged


# ----------------------------------------------------------------------------------------------------------------------
# scoring


class Judges:
    """The run's judges, loaded on first use (a re-run whose scores are cached loads none)."""

    def __init__(self, config: EvaluationConfig):
        self.config, self._cache = config, {}

    def names(self) -> dict:
        c = self.config
        kind = {"detox": {"toxicity": c.toxicity_judge}}.get(c.task, {"sentiment": c.sentiment_judge})
        return {**kind, "fluency": c.fluency_lm}

    def get(self, kind: str):
        from .judges import fluency_judge, sentiment_judge, toxicity_judge

        if kind not in self._cache:
            make = {"toxicity": toxicity_judge, "sentiment": sentiment_judge, "fluency": fluency_judge}[kind]
            self._cache[kind] = make(self.names()[kind], self.config.device)
        return self._cache[kind]


def score_setting(setting: Setting, rows: list[dict], judges: Judges, output: str) -> dict:
    """Per-sample judge outputs for a setting, cached in `scores/<setting>.json` (NaN stored as null)."""
    path = Path(output) / "scores" / f"{setting.name}.json"
    prompts = [r["prompt"] for r in rows]
    conts = [r["continuations"] for r in rows]
    if path.exists():
        cached = json.loads(path.read_text())
        if cached["judges"] == judges.names() and cached["prompts"] == prompts and cached["continuations"] == conts:
            return cached
    sizes = [len(c) for c in conts]
    flat = [c for row in conts for c in row]
    scores = {"judges": judges.names(), "prompts": prompts, "continuations": conts}
    if "toxicity" in scores["judges"]:  # the continuation alone is scored, as DExperts / RAD do
        scores["toxicity"] = regroup(judges.get("toxicity").score(flat), sizes)
    if "sentiment" in scores["judges"]:  # prompt + continuation, as the papers do
        whole = [p + c for p, row in zip(prompts, conts, strict=True) for c in row]
        scores["sentiment"] = regroup(judges.get("sentiment").classify(whole), sizes)
    if scores["judges"]["fluency"] != "none":
        scores["perplexity"] = judges.get("fluency").perplexities(prompts, conts)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(_nan_to_null(scores)) + "\n")
    return json.loads(path.read_text())


def _nan_to_null(value):
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, list):
        return [_nan_to_null(v) for v in value]
    if isinstance(value, dict):
        return {k: _nan_to_null(v) for k, v in value.items()}
    return value


def _null_to_nan(rows: list[list]) -> list[list[float]]:
    return [[math.nan if v is None else float(v) for v in row] for row in rows]


def setting_metrics(setting: Setting, rows: list[dict], scores: dict) -> dict:
    metrics = {"method": setting.method, "beta": setting.beta if setting.method != "none" else None,
               "num_prompts": len(rows), "num_samples": sum(len(r["continuations"]) for r in rows)}  # fmt: skip
    if "toxicity" in scores:
        metrics.update(toxicity_metrics(_null_to_nan(scores["toxicity"])))
    if "sentiment" in scores:
        metrics.update(sentiment_metrics(scores["sentiment"]))
    if "perplexity" in scores:
        metrics.update(perplexity_metrics(_null_to_nan(scores["perplexity"])))
    metrics.update(distinct_n(scores["continuations"]))
    metrics["generation_seconds"] = sum(r["seconds"] for r in rows)
    return metrics


# ----------------------------------------------------------------------------------------------------------------------
# the run


def weights_fingerprint(name: str) -> str:
    """What identifies the weights behind a model name: a digest of a shipped reward model's delta or of a folder's
    weight files (so a folder or shipped model retrained under the same name is noticed); a Hub id or embedded name
    stands for itself."""
    from ..checkpoints import SHIPPED_DIR, shipped_models

    folder = SHIPPED_DIR / name if name in shipped_models() else Path(name)
    files = (
        sorted(f for pattern in ("*.safetensors", "*.bin") for f in folder.glob(pattern)) if folder.is_dir() else []
    )
    if not files:
        return name
    digest = hashlib.sha256()
    for f in files:
        with open(f, "rb") as handle:
            digest.update(f.name.encode() + hashlib.file_digest(handle, "sha256").digest())
    return f"{name}@{digest.hexdigest()[:12]}"


def _check_resume(config: EvaluationConfig) -> dict[str, str]:
    """Refuse a resume that would mix samples; record the settings; return the weight fingerprints of the run."""
    path = Path(config.output) / "config.json"
    models = {"lm": config.lm} | {m: config.reward_model_name(m) for m in config.methods if m != "none"}
    fingerprints = {key: weights_fingerprint(name) for key, name in models.items()}
    old = json.loads(path.read_text()) if path.exists() else {}
    changed = [k for k in _SAMPLING_FIELDS if k in old and old[k] != asdict(config)[k]]
    if changed:
        raise EvaluationError(
            f"{config.output} holds a run with other {changed} ({[old.get(k) for k in changed]}); resuming would "
            "mix samples. Use another --output, or the same settings."
        )
    stored = old.get("fingerprints", {})
    for key, fingerprint in fingerprints.items():
        pattern = "*" if key == "lm" else f"{key}_b*"  # the samples drawn with this model
        drawn = sorted(p.name for p in (Path(config.output) / "generations").glob(pattern) if p.is_dir())
        if stored.get(key, fingerprint) != fingerprint and drawn:
            raise EvaluationError(
                f"The weights of {models[key]} changed since {config.output} sampled {drawn} with it "
                f"({stored[key]} -> {fingerprint}); resuming would mix models. Use another --output, or delete "
                f"those settings' folders and .jsonl files under generations/ to redo them."
            )
    path.parent.mkdir(parents=True, exist_ok=True)
    record = asdict(config) | {"fingerprints": stored | fingerprints}
    path.write_text(json.dumps(record, indent=2) + "\n")
    return record["fingerprints"]


def run_evaluation(config: EvaluationConfig, on_batch=None) -> dict | None:
    """Generate, score and report every setting; returns the results on the main process (None elsewhere).

    Under `accelerate launch` every process samples its share of the prompt batches; the main process merges them
    and scores. `on_batch(setting, batch_index)` is called after each batch is written (tests interrupt there).
    """
    from accelerate import PartialState
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from ..embedded import is_embedded, resolve

    state = PartialState(cpu=config.device == "cpu")
    prompts = load_prompts(config.prompts, config.num_prompts)
    fingerprints = _check_resume(config) if state.is_main_process else None
    state.wait_for_everyone()
    lm_path = resolve(config.lm) if is_embedded(config.lm) else config.lm
    tokenizer = AutoTokenizer.from_pretrained(lm_path, padding_side="left")
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    todo = [s for s in config.settings() if not set(range(len(prompts))) <= _done(config, s)]
    # reward models load (and are checked) before any sampling: a wrong one should not surface an hour in
    reward_models = {m: load_reward_model(config.reward_model_name(m), m, config.device)
                     for m in dict.fromkeys(s.method for s in todo) if m != "none"}  # fmt: skip
    if todo:
        lm = AutoModelForCausalLM.from_pretrained(lm_path).to(config.device).eval()
        for setting in todo:
            reward_model = reward_models.get(setting.method)
            generate_setting(setting, prompts, lm, tokenizer, reward_model, config, state, on_batch)
    state.wait_for_everyone()
    report = _score_and_report(config, prompts, fingerprints) if state.is_main_process else None
    state.wait_for_everyone()
    state.destroy_process_group()  # an open group at exit can abort a rank after the work is done
    return report


def _score_and_report(config: EvaluationConfig, prompts: list[str], fingerprints: dict[str, str]) -> dict:
    from .report import write_report

    judges, results, per_prompt = Judges(config), {}, {}
    for setting in config.settings():
        rows = merge_generations(setting, len(prompts), config.output)
        scores = score_setting(setting, rows, judges, config.output)
        results[setting.name] = setting_metrics(setting, rows, scores)
        per_prompt[setting.name] = (
            prompt_maxima(_null_to_nan(scores["toxicity"])) if "toxicity" in scores
            else prompt_positive_fractions(scores["sentiment"])
        )  # fmt: skip
    comparisons = {}
    for beta in config.betas:  # the paper's claim: RAD-Q on par with RAD-V at the same β
        q, v = Setting("rad-q", float(beta)).name, Setting("rad-v", float(beta)).name
        if q in per_prompt and v in per_prompt:
            metric = "avg_max_toxicity" if config.task == "detox" else "positive_rate"
            comparisons[f"{q} − {v}"] = {"metric": metric, **paired_difference(per_prompt[q], per_prompt[v])}
    return write_report(config, results, judges.names(), comparisons, fingerprints)


def _done(config: EvaluationConfig, setting: Setting) -> set[int]:
    return set(_on_disk(config.output, setting))
