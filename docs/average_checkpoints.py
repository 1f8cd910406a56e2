"""Uniform weight average ("soup") of reward-model checkpoints of one architecture (reward_quality.md §12).

Run from the repository root: `python docs/average_checkpoints.py OUT CKPT [CKPT ...]`. Each CKPT is a folder with
the merged `model.safetensors` the reward trainers save (a shipped model's: `rad_q_hf.default_checkpoint(name)`);
OUT gets the element-wise mean of their tensors (accumulated in float64) and the first folder's config, code and
tokenizer, so `evaluate_reward_model.py --checkpoint OUT` scores it like any checkpoint. The average of LoRA runs is a
full-rank delta, so a soup would ship as a stacked LoRA of rank Σ r_i, not as one run's r.
"""

import json
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file
from transformers import AutoConfig, AutoModel, AutoTokenizer

import rad_q_hf  # noqa: F401  (registers the reward-model classes with the Auto* factories)

WEIGHTS = "model.safetensors"


def _what_it_scores(folder: Path) -> tuple:
    config = json.loads((folder / "config.json").read_text())
    return config.get("model_type"), config.get("label_names")


def average(folders: list[Path]) -> dict[str, torch.Tensor]:
    # Equal shapes are not enough: a toxicity and a sentiment model of one size would average without complaint.
    expected = _what_it_scores(folders[0])
    for folder in folders[1:]:
        if (scores := _what_it_scores(folder)) != expected:
            raise ValueError(
                f"{folder} is a {scores} model and {folders[0]} a {expected} one (model type, labels): only "
                "checkpoints of one method and task average."
            )
    states = [load_file(folder / WEIGHTS) for folder in folders]
    for folder, state in zip(folders[1:], states[1:], strict=True):
        if state.keys() != states[0].keys() or any(state[k].shape != v.shape for k, v in states[0].items()):
            raise ValueError(f"{folder} is not the architecture of {folders[0]}: only same-shape checkpoints average.")
    return {k: torch.stack([s[k].double() for s in states]).mean(0).to(v.dtype) for k, v in states[0].items()}


def main(out: Path, folders: list[Path]) -> None:
    soup = average(folders)
    # Written as every checkpoint folder is (config, remote code, custom_generate/, tokenizer), not copied by hand:
    # the first folder's own results and run settings would describe it, not the average.
    model = AutoModel.from_config(AutoConfig.from_pretrained(folders[0]))
    model.save_pretrained(out, state_dict=soup)
    AutoTokenizer.from_pretrained(folders[0]).save_pretrained(out)
    print(f"{out}: the mean of {len(folders)} checkpoints")


if __name__ == "__main__":
    if len(sys.argv) < 4:
        sys.exit(__doc__)
    main(Path(sys.argv[1]), [Path(p) for p in sys.argv[2:]])
