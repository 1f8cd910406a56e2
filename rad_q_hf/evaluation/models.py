"""The models of a run: the steered LM and its tokenizer, the reward models (checked against their method), and the
fingerprints that tie samples on disk to the weights that drew them."""

import hashlib
from pathlib import Path

from .config import MODEL_TYPES, TASKS, EvaluationError


def load_reward_model(name: str, method: str, device: str = "cpu", lm=None):
    """A shipped reward model by name (assembled offline), or a folder / Hub id; checked against `method`.

    A trunk reward model (`rad-q-trunk`) reads the steered LM's own hidden states: `lm` is attached to it, and an LM
    other than the one it was trained on is an `EvaluationError`.
    """
    from transformers import AutoModel

    from ..checkpoints import load_checkpoint, reward_model_path

    model = load_checkpoint(AutoModel.from_pretrained, reward_model_path(name), name).to(device).eval()
    if MODEL_TYPES.get(method) != model.config.model_type:
        raise EvaluationError(
            f"Reward model {name} is a {model.config.model_type} model; it does not fit --method {method}."
        )
    if model.config.model_type == "rad_q_trunk" and lm is not None:
        try:
            model.attach_lm(lm)
        except ValueError as error:
            raise EvaluationError(
                f"{error} Use --method rad-q or rad-v to steer this LM, or the LM {name} was trained on."
            ) from None
    return model


def task_label(reward_model, task: str) -> int:
    """Index of the label that `task` steers: the first of its `TASKS` label names the model predicts; a model with the
    one generic label "score" is taken as the task's. Any other model is refused: a sentiment model asked to detoxify
    would steer on *positive* without a word."""
    names, wanted = list(reward_model.config.label_names), TASKS[task][1]
    for name in wanted:
        if name in names:
            return names.index(name)
    if names == ["score"]:
        return 0
    raise EvaluationError(
        f"The reward model {reward_model.name_or_path} predicts {names}, but --task {task} steers a label named "
        f"{' or '.join(map(repr, wanted))}: use a reward model of this task (e.g. {TASKS[task][0]['rad-q']}), or "
        "another --task."
    )


def steering_processor(method: str, task: str, reward_model, beta: float, top_k: int, attention_mask, tokenizer):
    """The logits processor of `method` (rad-q, rad-v, rad-q-trunk) steering towards `task`'s label and direction."""
    from ..decoding import RADQ, RADV
    from ..decoding_trunk import RADQTrunk

    label, direction = task_label(reward_model, task), TASKS[task][2]
    cls = {"rad-q": RADQ, "rad-v": RADV, "rad-q-trunk": RADQTrunk}[method]
    return cls(reward_model, beta=beta, top_k=top_k, label=label, direction=direction, attention_mask=attention_mask,
               tokenizer=tokenizer)  # fmt: skip


def reward_tokenizer(reward_model, lm_tokenizer):
    """The tokenizer the reward model reads: the one saved with it (it may differ from the LM's, e.g. Gemma-3 steered
    by a SmolLM2 reward model), else the LM's when that fits its vocabulary."""
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(reward_model.name_or_path)
    except (OSError, ValueError, TypeError):
        if len(lm_tokenizer) > reward_model.config.vocab_size:
            raise EvaluationError(
                f"The reward model {reward_model.name_or_path} has no saved tokenizer and the LM's does not fit its "
                "vocabulary: save the reward model's tokenizer into its folder."
            ) from None
        return lm_tokenizer


def load_tokenizer(name: str):
    """The LM's tokenizer, left-padding (prompts end where generation starts), with a pad token."""
    from transformers import AutoTokenizer

    from ..checkpoints import lm_path

    tokenizer = AutoTokenizer.from_pretrained(lm_path(name), padding_side="left")
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_lm(name: str, device: str = "cpu"):
    from transformers import AutoModelForCausalLM

    from ..checkpoints import lm_path, load_checkpoint

    return load_checkpoint(AutoModelForCausalLM.from_pretrained, lm_path(name), name).to(device).eval()


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


__all__ = [
    "load_lm",
    "load_reward_model",
    "load_tokenizer",
    "reward_tokenizer",
    "steering_processor",
    "weights_fingerprint",
]
