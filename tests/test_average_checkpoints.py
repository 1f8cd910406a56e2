"""docs/average_checkpoints.py (the weight soups of reward_quality.md §12) against a hand-built average."""

import importlib.util
from pathlib import Path

import pytest
import torch
from conftest import build_reward_model
from transformers import AutoModel

SCRIPT = Path(__file__).resolve().parents[1] / "docs" / "average_checkpoints.py"
spec = importlib.util.spec_from_file_location("average_checkpoints", SCRIPT)
average_checkpoints = importlib.util.module_from_spec(spec)
spec.loader.exec_module(average_checkpoints)


def test_soup_is_the_mean_of_the_checkpoints_and_loads_as_one(tmp_path, tokenizer):
    models = [build_reward_model("rad_v", "llama", len(tokenizer), seed=seed) for seed in (0, 1, 2)]
    for i, model in enumerate(models):
        model.save_pretrained(tmp_path / f"run{i}")
        tokenizer.save_pretrained(tmp_path / f"run{i}")
        (tmp_path / f"run{i}" / "eval_results.json").write_text("{}")  # the first run's results must not be copied
    average_checkpoints.main(tmp_path / "soup", [tmp_path / f"run{i}" for i in range(3)])

    reference = build_reward_model("rad_v", "llama", len(tokenizer), seed=0)
    with torch.no_grad():
        for name, param in reference.named_parameters():
            param.copy_(sum(dict(m.named_parameters())[name] for m in models) / 3)
    soup = AutoModel.from_pretrained(tmp_path / "soup").eval()
    ids = torch.tensor([[5, 9, 3, 7, 11]])
    torch.testing.assert_close(soup(ids).rewards, reference(ids).rewards)
    assert not any(torch.equal(soup(ids).rewards, m(ids).rewards) for m in models)
    assert not (tmp_path / "soup" / "eval_results.json").exists()


def test_checkpoints_of_other_shapes_are_refused(tmp_path, tokenizer):
    build_reward_model("rad_v", "llama", len(tokenizer)).save_pretrained(tmp_path / "a")
    build_reward_model("rad_v", "gpt2", len(tokenizer)).save_pretrained(tmp_path / "b")
    with pytest.raises(ValueError, match="not the architecture"):
        average_checkpoints.average([tmp_path / "a", tmp_path / "b"])


def test_checkpoints_that_score_other_labels_are_refused(tmp_path, tokenizer):
    build_reward_model("rad_v", "llama", len(tokenizer), labels=("toxicity",)).save_pretrained(tmp_path / "a")
    build_reward_model("rad_v", "llama", len(tokenizer), labels=("positive",)).save_pretrained(tmp_path / "b")
    with pytest.raises(ValueError, match="one method and task"):
        average_checkpoints.average([tmp_path / "a", tmp_path / "b"])
