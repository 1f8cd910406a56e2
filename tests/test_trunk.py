"""RAD-Q on the LM's own trunk: the model (tap, loss, checkpoint, fingerprint) and decoding against a reference
that runs the LM *without hooks* on each row's full prefix at every step, in every generate mode."""

import gc
import math

import pytest
import torch
from conftest import BACKBONES, build_reward_model
from test_decoding import PAD, Recorder, ReferenceProcessor, V, prompts, record_processor_calls, spread
from transformers import AutoModel, AutoModelForCausalLM

from rad_q_hf import RadQTrunkForRewardModeling, RewardAugmentedLogitsProcessor, RewardTerm, reward_augmented_generate
from rad_q_hf.decoding_trunk import RADQTrunk
from rad_q_hf.modeling_rad_q_trunk import decoder_layers
from rad_q_hf.modeling_rad_v import cumulative_mse_loss

NUM_LAYERS, TAP = 3, 1


def build_lm(backbone, seed=123, dtype=None):
    torch.manual_seed(seed)
    config = BACKBONES[backbone](V)
    config.num_hidden_layers = NUM_LAYERS
    return AutoModelForCausalLM.from_config(config, dtype=dtype).eval()


def build_trunk(lm, num_blocks=1, tap_norm="learned", labels=("a", "b"), seed=1):
    torch.manual_seed(seed)
    rm = RadQTrunkForRewardModeling.from_lm(lm, tap_layer=TAP, num_blocks=num_blocks, labels=labels, tap_norm=tap_norm)
    torch.nn.init.normal_(rm.reward_head.weight, std=0.02)  # W starts at 0; tests want token-dependent rewards
    return spread(rm.eval())


def lm_hooks(lm):
    """Hooks of this package on the LM (transformers keeps its own output-capturing hooks installed)."""
    hooks = [h for m in lm.modules() for h in [*m._forward_hooks.values(), *m._forward_pre_hooks.values()]]
    return sum(getattr(h, "__module__", "").startswith("rad_q_hf") for h in hooks)


def reference_states(lm, real):
    """The LM's layer-L output over one row's real tokens, from a plain forward (no hooks of ours)."""
    assert lm_hooks(lm) == 0
    return lm(real[None], output_hidden_states=True).hidden_states[TAP]  # (1, n, d); index 0 = embeddings


# ------------------------------------------------------------------------------------------------------------------
# modeling


@pytest.mark.parametrize("num_blocks", [0, 1, 2])
def test_tap_equals_the_lms_hidden_states_and_upper_layers_never_run(backbone, num_blocks):
    lm = build_lm(backbone)
    rm = build_trunk(lm, num_blocks)
    ids, mask = prompts([6, 3, 1])
    upper = []
    handle = decoder_layers(lm)[TAP].register_forward_hook(lambda *a: upper.append(1))
    tapped = rm.tap(ids, mask)  # (B, T, d), left-padded
    out = rm(ids, attention_mask=mask)
    handle.remove()
    assert not upper  # layers above L never ran
    for i, n in enumerate([6, 3, 1]):
        real = ids[i, -n:]
        with torch.no_grad():
            torch.testing.assert_close(tapped[i, -n:], reference_states(lm, real)[0], rtol=1e-5, atol=1e-5)
            g, _ = rm.run_top(reference_states(lm, real))
            expected = rm.score_hidden(g[0, :-1], real[1:, None])[..., 0]  # (n − 1, L): x_t after x<t
        torch.testing.assert_close(out.rewards[i, ids.shape[1] - n + 1 :], expected, rtol=1e-4, atol=1e-5)
    assert out.reward_mask.tolist() == [[0] + [1] * 5, [0] * 4 + [1] * 2, [0] * 6]


def test_loss_is_the_cumulative_mse_over_real_prefixes_and_only_the_top_trains(backbone):
    lm = build_lm(backbone)
    rm = build_trunk(lm, 1).train()
    ids, mask = prompts([6, 3, 4])
    labels = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.5, 0.5]])
    out = rm(ids, attention_mask=mask, labels=labels)
    assert torch.allclose(out.loss, cumulative_mse_loss(out.rewards, labels, out.reward_mask))
    out.loss.backward()
    assert all(p.grad is None for p in lm.parameters())  # the LM is frozen
    assert rm.reward_head.weight.grad.abs().sum() > 0 and rm.tap_norm.weight.grad.abs().sum() > 0
    assert {n.split(".")[0] for n, _ in rm.named_parameters()} == {"tap_norm", "top", "reward_head", "baseline_head"}


def test_trains_with_the_existing_trainer(tmp_path):
    from datasets import Dataset

    from rad_q_hf.training import RewardRegressionTrainer, RewardTrainingConfig

    lm = build_lm("llama")
    rm = RadQTrunkForRewardModeling.from_lm(lm, tap_layer=TAP, num_blocks=1, labels=["score"])
    lm_before = {k: v.clone() for k, v in lm.state_dict().items()}
    top_before = rm.top.state_dict()["layers.0.mlp.up_proj.weight"].clone()
    data = Dataset.from_dict({"input_ids": [[5, 6, 7, 8], [9, 10, 11]] * 8, "labels": [[1.0], [0.0]] * 8})
    args = RewardTrainingConfig(
        str(tmp_path), max_steps=3, per_device_train_batch_size=4, report_to="none", learning_rate=1e-2
    )
    trainer = RewardRegressionTrainer(rm, args, train_dataset=data, eval_dataset=data)
    trainer.train()
    metrics = trainer.evaluate()
    assert math.isfinite(metrics["eval_loss"]) and 0 <= metrics["eval_accuracy"] <= 1
    assert not torch.equal(rm.top.state_dict()["layers.0.mlp.up_proj.weight"], top_before)
    assert all(torch.equal(v, lm_before[k]) for k, v in lm.state_dict().items())


def test_trainer_loss_is_the_models_own_loss():
    """The trainer must weigh only the prefixes the model scores (its `reward_mask`), not every real token."""
    from rad_q_hf.training import RewardRegressionTrainer, RewardTrainingConfig

    lm = build_lm("gpt2")
    rm = build_trunk(lm, 1, labels=("a",))
    ids, mask = prompts([6, 3, 4])
    right = torch.stack([torch.cat([r[m.bool()], r[~m.bool()]]) for r, m in zip(ids, mask, strict=True)])
    right_mask = mask.sort(1, descending=True).values  # the collator right-pads
    labels = torch.tensor([[1.0], [0.0], [0.5]])
    trainer = RewardRegressionTrainer(rm, RewardTrainingConfig("/tmp/rad-q-trunk-test", report_to="none"))
    loss = trainer.compute_loss(rm, {"input_ids": right, "attention_mask": right_mask, "labels": labels})
    torch.testing.assert_close(loss, rm(right, attention_mask=right_mask, labels=labels).loss)


def test_checkpoint_is_small_names_its_lm_and_refuses_another(backbone, tmp_path):
    lm = build_lm(backbone)
    rm = build_trunk(lm, 1)
    rm.save_pretrained(tmp_path)
    saved = sum(p.numel() for p in rm.parameters())
    assert saved < sum(p.numel() for p in lm.parameters()) / 2
    from safetensors.torch import load_file

    keys = load_file(tmp_path / "model.safetensors")
    assert not any(k.startswith(("lm.", "backbone.")) for k in keys)  # never the LM's weights or E
    assert all(v.shape[0] != V for v in keys.values())
    loaded = AutoModel.from_pretrained(tmp_path, lm=lm)
    assert type(loaded).__name__ == "RadQTrunkForRewardModeling"
    ids, mask = prompts([5, 2])
    torch.testing.assert_close(loaded(ids, attention_mask=mask).rewards, rm(ids, attention_mask=mask).rewards)
    # The same weights in another dtype pass; another LM (same shapes) is refused, as is another architecture size.
    RadQTrunkForRewardModeling.from_pretrained(tmp_path, lm=build_lm(backbone).to(torch.bfloat16))
    with pytest.raises(ValueError, match="only works with it"):
        RadQTrunkForRewardModeling.from_pretrained(tmp_path, lm=build_lm(backbone, seed=5))
    with pytest.raises(ValueError, match="only works with its own LM"):
        loaded.attach_lm(AutoModelForCausalLM.from_config(BACKBONES[backbone](V)))
    no_lm = RadQTrunkForRewardModeling.from_pretrained(tmp_path)
    no_lm.config.lm_name_or_path = None
    with pytest.raises(ValueError, match="attach_lm"):
        no_lm(ids)


def test_config_errors():
    lm = build_lm("gpt2")
    with pytest.raises(ValueError, match="tap_layer"):
        RadQTrunkForRewardModeling.from_lm(lm, tap_layer=NUM_LAYERS + 1)
    with pytest.raises(ValueError, match="tap_norm"):
        RadQTrunkForRewardModeling.from_lm(lm, tap_layer=1, tap_norm="batch")


# ------------------------------------------------------------------------------------------------------------------
# decoding

MODES = ["batch1", "batch3_left_padded", "num_return_sequences2", "beam2", "eos_early", "top_p", "combined"]


class TrunkReference(ReferenceProcessor):
    """Trunk rewards from a hook-free LM forward on the whole real prefix; a separate RAD-Q term as usual."""

    def __init__(self, lm, terms, top_k, top_p, prompt_mask):
        super().__init__(terms, top_k, top_p, prompt_mask)
        self.lm = lm

    def reward(self, term, label, real, cand):
        rm = term.reward_model
        if rm.config.model_type == "rad_q_trunk":
            g, _ = rm.run_top(reference_states(self.lm, real))  # no mask, no cache: the whole prefix
            return rm.score_hidden(g[0, -1], cand, label=label)
        seq = torch.cat([torch.tensor([0]), real])[None]  # a separate RAD-Q term: BOS ⊕ prefix, full vocabulary
        return rm(seq, use_cache=False).rewards[0, -1, label, cand]


def trunk_case(backbone, mode, num_blocks=1):
    lm = build_lm(backbone)
    terms = [RewardTerm(build_trunk(lm, num_blocks), beta=3.0, label=0)]
    top_k, top_p = 5, None
    lengths = {"batch1": [5]}.get(mode, [6, 3, 1])
    gen = dict(do_sample=True, max_new_tokens=6, pad_token_id=PAD, eos_token_id=1, top_k=0)
    if mode == "num_return_sequences2":
        lengths, gen["num_return_sequences"] = [5, 2], 2
    elif mode == "beam2":
        lengths = [5, 2]
        gen.update(do_sample=False, num_beams=2)
    elif mode == "eos_early":
        gen.update(eos_token_id=list(range(3, V, 7)), max_new_tokens=10)  # a seventh of V ends a row
    elif mode == "top_p":
        top_p, top_k = 0.8, None
    elif mode == "combined":  # a second trunk term (no blocks, the LM's norm) and a separate RAD-Q model
        terms.append(RewardTerm(build_trunk(lm, 0, tap_norm="lm", seed=2), 2.0, "b", "minimize"))
        terms.append(RewardTerm(spread(build_reward_model("rad_q", backbone, V, seed=3)), 1.0, "a"))
    ids, mask = prompts(lengths)
    return lm, ids, mask, terms, top_k, top_p, gen


def check_against_reference(lm, calls, terms, top_k, top_p, mask):
    assert lm_hooks(lm) == 0  # the processor removed its hook
    reference = TrunkReference(lm, terms, top_k, top_p, mask)
    bonus = []
    for step, (step_ids, raw, processed) in enumerate(calls):
        torch.testing.assert_close(processed, reference(step_ids, raw), rtol=1e-4, atol=1e-4, msg=f"step {step}")
        bonus.append((processed - raw)[processed.isfinite()])
    assert torch.cat(bonus).std() > 0.1  # the rewards vary: not a comparison of constants


@pytest.mark.parametrize("mode", MODES)
def test_processor_matches_hook_free_reference(backbone, mode):
    lm, ids, mask, terms, top_k, top_p, gen = trunk_case(backbone, mode)
    proc = RewardAugmentedLogitsProcessor.combine(terms, top_k=top_k, top_p=top_p, attention_mask=mask)
    recorder = Recorder(proc)
    torch.manual_seed(0)
    out = lm.generate(ids, attention_mask=mask, logits_processor=[recorder], return_dict_in_generate=True,
                      output_scores=True, **gen)  # fmt: skip
    assert len(recorder.calls) == len(out.scores) >= 2
    proc.close()
    check_against_reference(lm, recorder.calls, terms, top_k, top_p, mask)


@pytest.mark.parametrize("num_blocks", [0, 2])
def test_other_block_counts_match_the_reference(num_blocks):
    lm, ids, mask, terms, top_k, top_p, gen = trunk_case("llama", "batch3_left_padded", num_blocks)
    proc = RADQTrunk(terms[0].reward_model, beta=3.0, top_k=5, attention_mask=mask)
    recorder = Recorder(proc)
    torch.manual_seed(0)
    lm.generate(ids, attention_mask=mask, logits_processor=[recorder], **gen)
    proc.close()
    check_against_reference(lm, recorder.calls, terms, top_k, top_p, mask)


@pytest.mark.parametrize("mode", ["batch3_left_padded", "num_return_sequences2", "beam2", "combined"])
def test_custom_generate_matches_reference_and_removes_its_hook(mode, monkeypatch):
    lm, ids, mask, terms, top_k, top_p, gen = trunk_case("gpt2", mode)
    calls = record_processor_calls(monkeypatch)
    gen.pop("top_k")
    lm.generate(ids, attention_mask=mask, custom_generate=reward_augmented_generate, reward_model=terms, top_k=top_k,
                **gen)  # fmt: skip
    assert len(calls) >= 2
    check_against_reference(lm, calls, terms, top_k, top_p, mask)


def test_custom_generate_attaches_the_generating_lm_and_checks_it():
    lm = build_lm("llama")
    rm = build_trunk(lm, 1)
    twin = build_lm("llama")  # the same weights, another object: attached for this call (fingerprint checked)
    ids, mask = prompts([4, 2])
    gen = dict(do_sample=True, max_new_tokens=3, pad_token_id=PAD, custom_generate=reward_augmented_generate)
    twin.generate(ids, attention_mask=mask, reward_model=rm, **gen)
    assert rm.lm is twin and lm_hooks(twin) == 0
    with pytest.raises(ValueError, match="only works with it"):
        build_lm("llama", seed=9).generate(ids, attention_mask=mask, reward_model=rm, **gen)


def test_beta_zero_equals_plain_top_k_sampling():
    lm = build_lm("gpt2")
    ids, mask = prompts([6, 3, 4])
    gen = dict(do_sample=True, max_new_tokens=8, pad_token_id=PAD, eos_token_id=1)
    torch.manual_seed(7)
    plain = lm.generate(ids, attention_mask=mask, top_k=5, **gen)
    proc = RADQTrunk(build_trunk(lm, 1), 0.0, 5, attention_mask=mask)
    torch.manual_seed(7)
    guided = lm.generate(ids, attention_mask=mask, top_k=0, logits_processor=[proc], **gen)
    assert torch.equal(plain, guided)


def test_wrong_lm_assisted_decoding_and_hook_lifetime_are_handled():
    lm = build_lm("gpt2")
    rm = build_trunk(lm, 1)
    ids, mask = prompts([4, 2])
    gen = dict(do_sample=True, max_new_tokens=3, pad_token_id=PAD, top_k=0)
    with pytest.raises(RuntimeError, match="did not run before this step"):
        build_lm("gpt2").generate(ids, attention_mask=mask, logits_processor=[RADQTrunk(rm, attention_mask=mask)],
                                  **gen)  # fmt: skip
    gc.collect()
    assert lm_hooks(lm) == 0  # the dropped processor's hook went with it
    assistant = build_lm("gpt2", seed=4)
    proc = RADQTrunk(rm, top_k=5, attention_mask=mask[:1])
    with pytest.raises(RuntimeError, match="Assisted / speculative decoding"):  # the assistant calls it first
        lm.generate(ids[:1], attention_mask=mask[:1], logits_processor=[proc], assistant_model=assistant, **gen)
    proc.reset(attention_mask=mask)  # re-armed: usable again
    lm.generate(ids, attention_mask=mask, logits_processor=[proc], **gen)
    assert lm_hooks(lm) == 1
    proc.close()
    assert lm_hooks(lm) == 0
    with pytest.raises(TypeError, match="RADQTrunk needs a rad_q_trunk"):
        RADQTrunk(build_reward_model("rad_q", "gpt2", V))


def test_trust_remote_code_load_without_the_package_loads_its_lm_lazily(tmp_path):
    """The checkpoint carries its code and names its LM: a process without `rad_q_hf` loads both."""
    import subprocess
    import sys
    import textwrap

    lm = build_lm("llama")
    lm.save_pretrained(tmp_path / "lm")
    rm = build_trunk(lm, 1)
    rm.config.lm_name_or_path = str(tmp_path / "lm")
    rm.save_pretrained(tmp_path / "ckpt")
    ids, mask = prompts([6, 3])
    torch.save({"ids": ids, "mask": mask, "rewards": rm(ids, attention_mask=mask).rewards}, tmp_path / "expected.pt")
    script = textwrap.dedent(
        f"""
        import sys
        sys.modules["rad_q_hf"] = None  # importing it now raises ImportError
        import torch
        from transformers import AutoModel
        model = AutoModel.from_pretrained({str(tmp_path / "ckpt")!r}, trust_remote_code=True).eval()
        assert not type(model).__module__.startswith("rad_q_hf"), type(model).__module__
        e = torch.load({str(tmp_path / "expected.pt")!r})
        with torch.no_grad():
            got = model(e["ids"], attention_mask=e["mask"]).rewards
        torch.testing.assert_close(got, e["rewards"], rtol=1e-6, atol=1e-6)
        print("OK", type(model).__name__)
        """
    )
    env = {"HF_MODULES_CACHE": str(tmp_path / "modules"), "HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin"}
    res = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "OK RadQTrunkForRewardModeling" in res.stdout


def test_a_text_without_a_scored_token_has_no_reward(tokenizer):
    """The trunk kind scores x_t from the state at t − 1: a one-token text has no prefix state, so no reward (NaN)
    rather than the pad position's output; longer texts are unaffected by sitting beside it."""
    from conftest import llama_config
    from transformers import LlamaForCausalLM

    from rad_q_hf.scoring import text_rewards

    torch.manual_seed(0)
    rm = RadQTrunkForRewardModeling.from_lm(LlamaForCausalLM(llama_config(len(tokenizer))), 1, 1, ["toxicity"])
    with torch.no_grad():
        rm.reward_head.weight.normal_(0, 0.5)
    one = next(w for w in ("the", "movie", "a", "was") if len(tokenizer(w, add_special_tokens=False).input_ids) == 1)
    texts = ["the movie was great", one, "", "you are a"]
    mixed = text_rewards(rm, tokenizer, texts, batch_size=4)
    assert mixed[[1, 2]].isnan().all() and not mixed[[0, 3]].isnan().any()
    torch.testing.assert_close(mixed[[0, 3]], torch.cat([text_rewards(rm, tokenizer, [t]) for t in texts[::3]]))
