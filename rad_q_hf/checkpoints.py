"""Reward models shipped inside the package, as small deltas on the embedded SmolLM2.

A shipped model is a folder under `rad_q_hf/shipped/<name>/` holding only what training changed: the reward model's
`config.json`, the LoRA adapters and reward heads in fp16 (`delta.safetensors`), the LoRA settings and the base model
(`delta.json`), and a model card. `default_checkpoint(name)` assembles it once into an ordinary checkpoint folder in
the cache (frozen backbone from the embedded base model + merged LoRA + heads, with the tokenizer), so the standard
API loads it offline (tests/test_shipped.py):

    model = AutoModel.from_pretrained(rad_q_hf.default_checkpoint("rad-q-toxicity"))

    >>> import rad_q_hf
    >>> rad_q_hf.shipped_models()  # doctest: +NORMALIZE_WHITESPACE
    ['rad-q-sentiment', 'rad-q-toxicity', 'rad-q-trunk-sentiment', 'rad-q-trunk-toxicity', 'rad-v-sentiment',
     'rad-v-toxicity']

A RAD-Q-on-the-trunk model (`rad_q_trunk`) has no backbone of its own: its delta is its whole (small) state — norm,
own blocks, head — with `"lora": null`, and assembling it points its config at the embedded LM it reads.

A model trained at full size (no LoRA) is saved and loaded as an ordinary full checkpoint instead.
"""

import hashlib
import json
import os
import shutil
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from .embedded import _cache_root, _looks_like_path, _unknown, cached_folder, is_embedded, lm_path, resolve
from .modeling_rad_v import RadPreTrainedModel

SHIPPED_DIR = Path(__file__).parent / "shipped"
DELTA_WEIGHTS = "delta.safetensors"
DELTA_META = "delta.json"
# Which of the LoRA config's fields a delta keeps: enough to rebuild the same adapters.
_LORA_KEYS = ("r", "lora_alpha", "lora_dropout", "target_modules", "fan_in_fan_out", "use_rslora")


def shipped_models() -> list[str]:
    """Names of the reward models shipped in this installation."""
    return sorted(p.name for p in SHIPPED_DIR.iterdir() if (p / DELTA_META).is_file()) if SHIPPED_DIR.is_dir() else []


def export_delta(
    trained_dir: str | os.PathLike,
    out_dir: str | os.PathLike,
    base: str = "smollm2-135m",
    earlier_stages: list[str | os.PathLike] = (),
) -> Path:
    """Write the delta of a LoRA-trained checkpoint (its peft adapter in `adapter/`, as the reward trainers save it)
    to `out_dir`, in fp16. `base` names the backbone the delta applies to.

    A staged run (e.g. Amazon, then SST-2) merges each stage's adapters before the next adds its own; pass the earlier
    stages' folders in order and their adapters are stacked into one LoRA of rank Σ r_i by peft's own `cat`
    combination (`A = [s A_1; s A_2]`, `B = [B_1, B_2]`, scaling 1), which is exactly `W_0 + s B_1A_1 + s B_2A_2`.
    Heads come from the last stage. An earlier stage may also be a delta folder (a shipped model): training that
    went on from its `default_checkpoint` (`--init_from`) then stacks onto it.
    """
    trained_dir, out_dir = Path(trained_dir), Path(out_dir)
    if _model_type(trained_dir) == "rad_q_trunk":
        if earlier_stages:
            raise ValueError("A trunk reward model has no adapters to stack: export its last stage alone.")
        return _export_trunk(trained_dir, out_dir, base)
    with tempfile.TemporaryDirectory() as tmp:
        earlier = [_delta_as_stage(Path(p), Path(tmp) / f"stage-{i}", base) for i, p in enumerate(earlier_stages)]
        return _export_lora([*earlier, trained_dir], out_dir, base)


def _export_lora(stages: list[Path], out_dir: Path, base: str) -> Path:
    from transformers import AutoConfig, AutoModel

    from .training.adapters import ADAPTER_DIR, ADAPTER_WEIGHTS_NAME, load_adapter_state, stack_adapters

    trained_dir = stages[-1]
    for stage in stages:
        for name in ("config.json", f"{ADAPTER_DIR}/{ADAPTER_WEIGHTS_NAME}"):
            if not (stage / name).is_file():
                raise FileNotFoundError(
                    f"{stage / name} is missing: export a checkpoint saved by a LoRA run of the reward trainers "
                    "(a full fine-tune is shipped as an ordinary checkpoint instead)."
                )
    adapters = [stage / ADAPTER_DIR for stage in stages]
    skeleton = AutoModel.from_config(AutoConfig.from_pretrained(trained_dir))  # peft needs the modules, not weights
    lora, state = stack_adapters(skeleton, adapters)
    state.update({k: v for k, v in load_adapter_state(adapters[-1]).items() if ".lora_" not in k})  # the heads
    lora["target_modules"] = sorted(lora["target_modules"])
    out_dir.mkdir(parents=True, exist_ok=True)
    save_file({k: v.to(torch.float16).contiguous() for k, v in state.items()}, out_dir / DELTA_WEIGHTS)
    meta = {"base": base, "lora": {k: lora[k] for k in _LORA_KEYS if k in lora}, "dtype": "float16"}
    (out_dir / DELTA_META).write_text(json.dumps(meta, indent=2) + "\n")
    shutil.copy(trained_dir / "config.json", out_dir / "config.json")
    return out_dir


def _delta_as_stage(stage: Path, out: Path, base: str) -> Path:
    """`stage` itself when it is a training run's folder; a delta folder rewritten as one (its config and its LoRA as
    a peft adapter, in fp32: the fp16 values the assembled checkpoint that training went on from was built of)."""
    if not (stage / DELTA_META).is_file():
        return stage
    from peft import LoraConfig

    from .training.adapters import ADAPTER_DIR, ADAPTER_WEIGHTS_NAME, to_peft_name

    meta = json.loads((stage / DELTA_META).read_text())
    if meta["lora"] is None:
        raise ValueError(f"{stage} is a trunk model's delta: it has no adapters to stack.")
    if meta["base"] != base:
        raise ValueError(f"{stage} is a delta on {meta['base']!r}, not on {base!r}: pass base={meta['base']!r}.")
    (out / ADAPTER_DIR).mkdir(parents=True)
    LoraConfig(**meta["lora"]).save_pretrained(str(out / ADAPTER_DIR))
    lora = {to_peft_name(k): v.float() for k, v in load_file(stage / DELTA_WEIGHTS).items() if ".lora_" in k}
    save_file(lora, out / ADAPTER_DIR / ADAPTER_WEIGHTS_NAME)
    shutil.copy(stage / "config.json", out / "config.json")
    return out


def default_checkpoint(name: str, cache_dir: str | os.PathLike | None = None) -> str:
    """Path of an ordinary checkpoint folder for the shipped reward model `name` (or any delta folder), assembled on
    first use in `$RAD_Q_HF_CACHE` (default `~/.cache/rad_q_hf`)."""
    src = SHIPPED_DIR / name if (SHIPPED_DIR / name / DELTA_META).is_file() else Path(name)
    if not (src / DELTA_META).is_file():
        raise FileNotFoundError(
            f"No shipped reward model {name!r} (and no delta folder at that path); shipped: {shipped_models()}."
        )
    digest = hashlib.sha256((src / DELTA_WEIGHTS).read_bytes()).hexdigest()[:12]
    root = Path(cache_dir) if cache_dir is not None else _cache_root()
    target = root / "reward_models" / f"{src.name}-{digest}"
    note = f"assembling the shipped reward model {src.name} into {target}, once"
    folder = cached_folder(target, lambda tmp: _assemble(src, tmp), note)
    if not (Path(folder) / "custom_generate" / "generate.py").is_file():  # assembled by an older version
        RadPreTrainedModel.write_custom_generate(folder)
    return folder


def _model_type(folder: Path) -> str | None:
    config = folder / "config.json"
    return json.loads(config.read_text()).get("model_type") if config.is_file() else None


def _export_trunk(trained_dir: Path, out_dir: Path, base: str) -> Path:
    """A trunk model's delta: its whole state (norm, own blocks, head; never the LM's weights) in fp16."""
    from transformers import AutoModel

    model = AutoModel.from_pretrained(trained_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    state = {k: v.to(torch.float16).contiguous() for k, v in model.state_dict().items()}
    save_file(state, out_dir / DELTA_WEIGHTS)
    meta = {"base": base, "lora": None, "dtype": "float16"}
    (out_dir / DELTA_META).write_text(json.dumps(meta, indent=2) + "\n")
    model.config.lm_name_or_path = base  # where the LM comes from on the user's machine, not this one's path
    model.config.backbone_config._name_or_path = base
    model.config.to_json_file(out_dir / "config.json")
    return out_dir


def _assemble(src: Path, out_dir: Path) -> None:
    from peft import LoraConfig
    from transformers import AutoConfig, AutoModel, AutoTokenizer

    from .training.adapters import apply_lora, merged_state_dict

    meta = json.loads((src / DELTA_META).read_text())
    base = resolve(meta["base"]) if is_embedded(meta["base"]) else meta["base"]
    config = AutoConfig.from_pretrained(src)
    model_cls = AutoModel._model_mapping[type(config)]  # the reward-model class registered for this config
    if meta["lora"] is None:  # a trunk model: the delta is all of it; it reads the (embedded) LM named in `base`
        config.lm_name_or_path = base
        model = model_cls(config)
        delta = load_file(src / DELTA_WEIGHTS)
        model.load_state_dict({k: v.float() for k, v in delta.items()}, strict=True)
        model.save_pretrained(out_dir)
        AutoTokenizer.from_pretrained(base).save_pretrained(out_dir)
        _copy_card(src, out_dir)
        return
    model = model_cls.from_config_and_backbone(config, base)
    apply_lora(model, LoraConfig(**meta["lora"]))
    delta = load_file(src / DELTA_WEIGHTS)
    expected = {n for n, p in model.named_parameters() if p.requires_grad}
    if set(delta) != expected:
        raise ValueError(
            f"{src / DELTA_WEIGHTS} does not fit its config: missing {sorted(expected - set(delta))[:3]}, "
            f"unexpected {sorted(set(delta) - expected)[:3]}. The delta folder is corrupt or from another version."
        )
    model.load_state_dict({k: v.float() for k, v in delta.items()}, strict=False)
    model.save_pretrained(out_dir, state_dict=merged_state_dict(model))
    AutoTokenizer.from_pretrained(base).save_pretrained(out_dir)
    _copy_card(src, out_dir)


def _copy_card(src: Path, out_dir: Path) -> None:
    for extra in ("README.md", "eval_results.json"):
        if (src / extra).is_file():
            shutil.copy(src / extra, out_dir / extra)


class CorruptCheckpointError(OSError):
    """A weights file that cannot be read (truncated, or not safetensors); the message names it and the fix."""


def reward_model_path(name: str) -> str:
    """Where to load the reward model `name` from: a shipped name (assembled on first use), an existing folder, or an
    `org/name` Hub id. A path that does not exist or a near miss of a shipped name is a `FileNotFoundError` saying so
    (instead of the Hub's id rules or a connection error)."""
    if name in shipped_models():
        return default_checkpoint(name)
    if Path(name).expanduser().is_dir():
        return str(Path(name).expanduser())
    if _looks_like_path(name) or "/" not in name:
        raise _unknown(name, "Reward model", "shipped reward models", shipped_models())
    return name


def load_checkpoint(load: Callable[[str], object], path: str, name: str | None = None):
    """`load(path)` (e.g. `AutoModel.from_pretrained`), turning an unreadable weights file into a
    `CorruptCheckpointError` that names it; a broken cached copy of a shipped or embedded model is rebuilt once.
    A Hub id that fails to load says that no folder of that name exists here either."""
    from safetensors import SafetensorError

    try:
        return load(path)
    except OSError as error:
        if Path(path).expanduser().exists():
            raise
        raise OSError(f"{path!r} is not a folder here, and loading it as a Hub id failed: {error}") from error
    except SafetensorError as error:
        folder = Path(path)
        files = ", ".join(str(f) for f in sorted(folder.glob("*.safetensors"))) or str(folder)
        cache = _cache_root().resolve()
        rebuildable = name is not None and (name in shipped_models() or is_embedded(name))
        if rebuildable and folder.is_dir() and cache in folder.resolve().parents:
            print(
                f"rad_q_hf: the cached copy of {name} in {folder} is unreadable ({error}); rebuilding it.",
                file=sys.stderr,
            )
            shutil.rmtree(folder)
            rebuilt = default_checkpoint(name) if name in shipped_models() else resolve(name)
            try:
                return load(rebuilt)
            except SafetensorError as again:
                error = again
        raise CorruptCheckpointError(
            f"Cannot read the weights in {files} ({error}): the file is truncated or corrupt. Copy or save the "
            f"checkpoint again; for a shipped or embedded model, delete its cached folder {folder} to rebuild it."
        ) from error


__all__ = [
    "SHIPPED_DIR",
    "CorruptCheckpointError",
    "default_checkpoint",
    "export_delta",
    "lm_path",
    "load_checkpoint",
    "reward_model_path",
    "shipped_models",
]
