"""Shipping a LoRA-trained reward model as an fp16 delta and assembling it back into an ordinary checkpoint."""

import json
from pathlib import Path

import pytest
import torch
from conftest import llama_config
from datasets import Dataset
from safetensors.torch import load_file, save_file
from transformers import AutoModel, LlamaForCausalLM

from rad_q_hf import RadQForRewardModeling, RadVForRewardModeling, default_checkpoint
from rad_q_hf.checkpoints import export_delta
from rad_q_hf.training import RewardRegressionTrainer, RewardTrainingConfig, lora_config


@pytest.fixture(scope="module")
def tiny_lm(tmp_path_factory, tokenizer):
    path = tmp_path_factory.mktemp("tiny-lm")
    torch.manual_seed(0)
    LlamaForCausalLM(llama_config(len(tokenizer))).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def train_lora(model, folder, max_steps=3):
    """A few LoRA steps (r 4, alpha 8) of the reward trainer on a toy set; the checkpoint is saved to `folder`."""
    data = Dataset.from_dict({"input_ids": [[5, 6, 7], [8, 9, 10, 11]] * 8, "labels": [[1.0], [0.0]] * 8})
    args = RewardTrainingConfig(
        str(folder), max_steps=max_steps, learning_rate=1e-2, per_device_train_batch_size=4, report_to="none",
        use_cpu=True, save_strategy="no", disable_tqdm=True, dataloader_pin_memory=False,
    )  # fmt: skip
    trainer = RewardRegressionTrainer(model, args, train_dataset=data, peft_config=lora_config(r=4, alpha=8))
    trainer.train()
    trainer.save_model(folder)
    return model


@pytest.mark.parametrize("model_cls", [RadQForRewardModeling, RadVForRewardModeling])
def test_delta_round_trip(model_cls, tiny_lm, tmp_path):
    model = model_cls.from_backbone(str(tiny_lm), labels=["toxicity"], num_layers=1)
    train_lora(model, tmp_path / "run")

    delta = export_delta(tmp_path / "run", tmp_path / "delta", base=str(tiny_lm))
    weights = load_file(delta / "delta.safetensors")
    assert all(v.dtype == torch.float16 for v in weights.values())
    assert all(".lora_" in k or "_head" in k for k in weights)  # only what training changed
    assert json.loads((delta / "delta.json").read_text())["lora"]["r"] == 4

    path = default_checkpoint(str(delta), cache_dir=tmp_path / "cache")
    assert default_checkpoint(str(delta), cache_dir=tmp_path / "cache") == path  # assembled once
    loaded = AutoModel.from_pretrained(path).eval()
    assert type(loaded) is model_cls and loaded.config.label_names == ["toxicity"]
    model.eval()
    ids = torch.tensor([[0, 5, 6, 7, 8]])
    with torch.no_grad():
        torch.testing.assert_close(loaded(ids).rewards, model(ids).rewards, rtol=1e-2, atol=2e-3)  # fp16 delta

    # The assembled folder steers generate as a custom_generate; a cache assembled before that existed gets it too.
    (Path(path) / "custom_generate" / "generate.py").unlink()
    assert default_checkpoint(str(delta), cache_dir=tmp_path / "cache") == path
    lm = LlamaForCausalLM.from_pretrained(tiny_lm)
    gen = dict(do_sample=False, max_new_tokens=2, min_new_tokens=2, top_k=3, pad_token_id=2)
    out = lm.generate(ids, custom_generate=path, trust_remote_code=True, beta=5.0, **gen)
    assert out.shape == (1, ids.shape[1] + 2)


@pytest.mark.parametrize("num_blocks", [0, 1])
def test_trunk_delta_round_trip_reads_the_named_lm(num_blocks, tiny_lm, tmp_path):
    """A trunk model ships whole (fp16) and assembles pointing at its LM, whose fingerprint it still checks."""
    from rad_q_hf import RadQTrunkForRewardModeling

    lm = LlamaForCausalLM.from_pretrained(tiny_lm).eval()
    model = RadQTrunkForRewardModeling.from_lm(lm, tap_layer=1, num_blocks=num_blocks, labels=["toxicity"]).eval()
    torch.manual_seed(3)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))  # as if trained: W = 0 would hide a head that failed to load
    model.config.lm_name_or_path = "/the/training/machine/path"
    model.save_pretrained(tmp_path / "run")
    with pytest.raises(ValueError, match="no adapters to stack"):
        export_delta(tmp_path / "run", tmp_path / "bad", base=str(tiny_lm), earlier_stages=[tmp_path / "run"])
    delta = export_delta(tmp_path / "run", tmp_path / "delta", base=str(tiny_lm))
    assert json.loads((delta / "delta.json").read_text())["lora"] is None
    assert set(load_file(delta / "delta.safetensors")) == set(model.state_dict())  # the top only, never the LM
    assert json.loads((delta / "config.json").read_text())["lm_name_or_path"] == str(tiny_lm)

    path = default_checkpoint(str(delta), cache_dir=tmp_path / "cache")
    loaded = AutoModel.from_pretrained(path).eval()  # no lm=: loads the LM named in its config on first use
    assert type(loaded) is RadQTrunkForRewardModeling
    ids = torch.tensor([[0, 5, 6, 7, 8]])
    with torch.no_grad():
        expected = model(ids).rewards
        assert expected.abs().max() > 1e-3
        torch.testing.assert_close(loaded(ids).rewards, expected, rtol=1e-2, atol=2e-3)  # fp16 delta
    other = LlamaForCausalLM(lm.config)  # same shapes, other weights
    with pytest.raises(ValueError, match="not those of"):
        loaded.attach_lm(other)
    # the assembled folder steers generate by itself, reading the generating LM's own states
    gen = dict(do_sample=False, max_new_tokens=2, min_new_tokens=2, top_k=3, pad_token_id=2)
    out = lm.generate(ids, custom_generate=path, trust_remote_code=True, beta=5.0, **gen)
    assert out.shape == (1, ids.shape[1] + 2)
    with pytest.raises(ValueError, match="not those of"):
        other.generate(ids, custom_generate=path, trust_remote_code=True, beta=5.0, **gen)


def test_corrupt_or_missing_delta_errors(tiny_lm, tmp_path):
    with pytest.raises(FileNotFoundError, match="No shipped reward model 'nope'"):
        default_checkpoint("nope")
    with pytest.raises(FileNotFoundError, match="adapter_model.safetensors is missing"):
        RadVForRewardModeling.from_backbone(str(tiny_lm), num_layers=1).save_pretrained(tmp_path / "full")
        export_delta(tmp_path / "full", tmp_path / "delta")
    delta = tmp_path / "bad"
    delta.mkdir()
    RadVForRewardModeling.from_backbone(str(tiny_lm), num_layers=1).config.save_pretrained(delta)
    (delta / "delta.json").write_text(json.dumps({"base": str(tiny_lm), "lora": {"r": 2, "lora_alpha": 4}}))
    save_file({"value_head.weight": torch.zeros(1, 32, dtype=torch.float16)}, delta / "delta.safetensors")
    with pytest.raises(ValueError, match="does not fit its config"):
        default_checkpoint(str(delta), cache_dir=tmp_path / "cache")
    assert not any((tmp_path / "cache" / "reward_models").iterdir())  # nothing half-built is left behind


@pytest.mark.parametrize("task", ["detox", "positive"])
def test_model_card_has_the_required_sections(task, tmp_path):
    from rad_q_hf.model_card import render_card

    (tmp_path / "eval_results.json").write_text(
        json.dumps({"eval_accuracy": 0.875, "eval_mse": 0.1, "eval_loss": 0.2})
    )
    per_source = {"sst2": {"n": 872, "accuracy": 0.875, "mse": 0.1, "label_variance": 0.25}}
    card = render_card("rad-q-x", tmp_path, task=task, method="rad-q", data="DATA-NOTE", command="python make.py",
                       hyperparameters="HP-NOTE", num_layers=12, lora_r=16, delta_mb=4.4, per_source=per_source)  # fmt: skip
    text = str(card)
    assert card.data.base_model == "HuggingFaceTB/SmolLM2-135M-Instruct" and card.data.license == "apache-2.0"
    for needle in ("Content warning", "DATA-NOTE", "HP-NOTE", "`python make.py`", "| accuracy | 0.8750 |",
                   "| sst2 | 872 | 0.875 |", "Intended use and limitations", "push_to_hub", "logits_processor=[steer]",
                   'default_checkpoint("rad-q-x")'):  # fmt: skip
        assert needle in text, needle
    assert ("(1 = toxic)" if task == "detox" else "(1 = positive)") in text


def test_staged_lora_runs_stack_into_one_delta(tiny_lm, tmp_path):
    """Stage 2 adds new adapters on stage 1's merged weights; the exported delta stacks both exactly."""
    train_lora(RadQForRewardModeling.from_backbone(str(tiny_lm), labels=["positive"], num_layers=2), tmp_path / "s1")
    stage2 = train_lora(AutoModel.from_pretrained(tmp_path / "s1"), tmp_path / "s2").eval()
    with pytest.raises(FileNotFoundError):
        export_delta(tmp_path / "s2", tmp_path / "bad", base=str(tiny_lm), earlier_stages=[tmp_path / "nowhere"])
    delta = export_delta(tmp_path / "s2", tmp_path / "delta", base=str(tiny_lm), earlier_stages=[tmp_path / "s1"])
    lora = json.loads((delta / "delta.json").read_text())["lora"]
    assert (lora["r"], lora["lora_alpha"]) == (8, 8)  # rank 4 + 4; peft's `cat` folds the scaling 2 into A
    loaded = AutoModel.from_pretrained(default_checkpoint(str(delta), cache_dir=tmp_path / "cache")).eval()
    ids = torch.tensor([[0, 5, 6, 7, 8]])
    with torch.no_grad():
        torch.testing.assert_close(loaded(ids).rewards, stage2(ids).rewards, rtol=1e-2, atol=2e-3)
        only_stage2 = export_delta(tmp_path / "s2", tmp_path / "delta2", base=str(tiny_lm))  # forgets stage 1
        wrong = AutoModel.from_pretrained(default_checkpoint(str(only_stage2), cache_dir=tmp_path / "cache"))
        assert not torch.allclose(wrong.eval()(ids).rewards, stage2(ids).rewards, atol=2e-3)


def test_training_on_from_a_shipped_delta_stacks_onto_it(tiny_lm, tmp_path):
    """A stage trained from a delta's assembled checkpoint (`--init_from default_checkpoint(...)`) exports with the
    delta folder as its earlier stage; the result assembles to the model that stage trained."""
    train_lora(RadVForRewardModeling.from_backbone(str(tiny_lm), labels=["positive"], num_layers=2), tmp_path / "s1")
    shipped = export_delta(tmp_path / "s1", tmp_path / "shipped", base=str(tiny_lm))
    start = default_checkpoint(str(shipped), cache_dir=tmp_path / "cache")
    stage2 = train_lora(AutoModel.from_pretrained(start), tmp_path / "s2").eval()
    with pytest.raises(ValueError, match="not on 'elsewhere'"):
        export_delta(tmp_path / "s2", tmp_path / "bad", base="elsewhere", earlier_stages=[shipped])
    delta = export_delta(tmp_path / "s2", tmp_path / "delta", base=str(tiny_lm), earlier_stages=[shipped])
    assert json.loads((delta / "delta.json").read_text())["lora"]["r"] == 8
    loaded = AutoModel.from_pretrained(default_checkpoint(str(delta), cache_dir=tmp_path / "cache")).eval()
    ids = torch.tensor([[0, 5, 6, 7, 8]])
    with torch.no_grad():
        expected = stage2(ids).rewards
        torch.testing.assert_close(loaded(ids).rewards, expected, rtol=1e-2, atol=2e-3)
        alone = export_delta(tmp_path / "s2", tmp_path / "alone", base=str(tiny_lm))  # without the shipped stage
        wrong = AutoModel.from_pretrained(default_checkpoint(str(alone), cache_dir=tmp_path / "cache")).eval()
        assert not torch.allclose(wrong(ids).rewards, expected, atol=2e-3)


@pytest.mark.xfail(
    strict=True,
    reason="AutoTokenizer always loads the folder's config first, and a config.json whose auto_map names AutoConfig "
    "(needed for AutoModel + trust_remote_code) makes transformers 5.24 ask about remote code: not fixable in the "
    "saved files alone (issue 16 §4; load with PreTrainedTokenizerFast or trust_remote_code=True meanwhile)",
)
def test_saved_tokenizer_loads_without_remote_code(tmp_path, tokenizer):
    import subprocess
    import sys

    from conftest import build_reward_model

    build_reward_model("rad_q", "llama", len(tokenizer)).save_pretrained(tmp_path / "rm")
    tokenizer.save_pretrained(tmp_path / "rm")
    code = f"from transformers import AutoTokenizer; print(AutoTokenizer.from_pretrained({str(tmp_path / 'rm')!r})('the movie')['input_ids'])"
    result = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=120,
                            stdin=subprocess.DEVNULL)  # fmt: skip  # a process that never imports rad_q_hf
    out = result.stdout + result.stderr
    assert result.returncode == 0, out
    assert "custom code" not in out and "instantiate a model of type" not in out, out


def test_peft_stacking_assembles_to_the_same_weights_as_the_old_format(tiny_lm, tmp_path):
    """The shipped deltas were stacked by hand (`A = [A_1; A_2]`, `B = [B_1, B_2]`, alpha = r·s); peft's `cat`
    folds s into A instead (alpha = r). With s = alpha / r = 2 both assemble to bit-identical weights, so the
    shipped files need no rewrite."""
    from rad_q_hf.training.adapters import load_adapter_state

    stages = []
    model = RadQForRewardModeling.from_backbone(str(tiny_lm), labels=["positive"], num_layers=2)
    for i in range(2):
        folder = tmp_path / f"s{i}"
        train_lora(model, folder, max_steps=2)
        stages.append(folder)
        model = AutoModel.from_pretrained(folder)
    new = export_delta(stages[1], tmp_path / "new", base=str(tiny_lm), earlier_stages=stages[:1])

    old = tmp_path / "old"  # the former export_delta, literally
    old.mkdir()
    first, last = (load_adapter_state(s / "adapter") for s in stages)
    state = {k: torch.cat([first[k], v], 0) if ".lora_A." in k else torch.cat([first[k], v], 1) if ".lora_B." in k
             else v for k, v in last.items()}  # fmt: skip
    save_file({k: v.to(torch.float16).contiguous() for k, v in state.items()}, old / "delta.safetensors")
    meta = json.loads((new / "delta.json").read_text())
    meta["lora"]["lora_alpha"] = 2 * meta["lora"]["r"]
    (old / "delta.json").write_text(json.dumps(meta))
    (old / "config.json").write_text((new / "config.json").read_text())

    assembled = [
        load_file(f"{default_checkpoint(str(d), cache_dir=tmp_path / 'cache')}/model.safetensors") for d in (old, new)
    ]
    assert assembled[0].keys() == assembled[1].keys()
    for key in assembled[0]:
        assert torch.equal(assembled[0][key], assembled[1][key]), key
