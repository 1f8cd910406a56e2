"""Uniform weight average ("soup") of reward-model checkpoints of one architecture (reward_quality.md §12).

Run from the repository root: `python docs/average_checkpoints.py OUT CKPT [CKPT ...]`. Each CKPT is a folder with
the merged `model.safetensors` the reward trainers save (a shipped model's: `rad_q_hf.default_checkpoint(name)`);
OUT gets the element-wise mean of their tensors (accumulated in float64) and the first folder's config, code and
tokenizer, so `evaluate_reward_model.py --checkpoint OUT` scores it like any checkpoint. The average of LoRA runs is a
full-rank delta, so a soup would ship as a stacked LoRA of rank Σ r_i, not as one run's r.
"""

import json
import shutil
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

WEIGHTS = "model.safetensors"
# The first folder's own results and run settings would describe it, not the average.
NOT_COPIED = {
    "eval_results.json",
    "all_results.json",
    "validation_results.json",
    "trainer_state.json",
    "run_args.json",
}


def _what_it_scores(folder: Path) -> tuple:
    config = json.loads((folder / "config.json").read_text())
    return config.get("model_type"), config.get("label_names")


def average(folders: list[Path]) -> dict[str, torch.Tensor]:
    # Equal shapes are not enough: a toxicity and a sentiment model of one size would average without complaint.
    for folder in folders[1:]:
        if _what_it_scores(folder) != _what_it_scores(folders[0]):
            raise ValueError(
                f"{folder} is a {_what_it_scores(folder)} model and {folders[0]} a {_what_it_scores(folders[0])} one "
                "(model type, labels): only checkpoints of one method and task average."
            )
    states = [load_file(folder / WEIGHTS) for folder in folders]
    for folder, state in zip(folders[1:], states[1:], strict=True):
        if state.keys() != states[0].keys() or any(state[k].shape != v.shape for k, v in states[0].items()):
            raise ValueError(f"{folder} is not the architecture of {folders[0]}: only same-shape checkpoints average.")
    return {k: torch.stack([s[k].double() for s in states]).mean(0).to(v.dtype) for k, v in states[0].items()}


def main(out: Path, folders: list[Path]) -> None:
    soup = average(folders)
    out.mkdir(parents=True, exist_ok=True)
    for f in folders[0].iterdir():  # config, remote code, tokenizer; not the first folder's results or trainer state
        if f.is_file() and f.suffix in {".json", ".py", ".jinja"} and f.name not in NOT_COPIED:
            shutil.copy(f, out / f.name)
        elif f.is_dir() and f.name == "custom_generate":
            shutil.copytree(f, out / f.name, dirs_exist_ok=True)
    save_file(soup, out / WEIGHTS, metadata={"format": "pt"})
    print(f"{out}: the mean of {len(folders)} checkpoints")


if __name__ == "__main__":
    if len(sys.argv) < 4:
        sys.exit(__doc__)
    main(Path(sys.argv[1]), [Path(p) for p in sys.argv[2:]])
