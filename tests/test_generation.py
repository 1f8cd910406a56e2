"""The mask-free route, `generate(custom_generate=reward_augmented_generate, reward_model=...)`.

It must give the same tokens as the explicit-mask processor (same seed) and agree with the cache-free reference of
test_decoding.py, in every mode; a saved reward-model folder must work as `custom_generate=<folder>`.
"""

import gc
import os
import subprocess
import sys
import weakref

import pytest
import torch
from conftest import BACKBONES, build_reward_model
from test_decoding import PAD, Recorder, ReferenceRAD, V, build_lm, prompts, record_processor_calls, setup_case, spread
from transformers import (
    AutoModelForCausalLM,
    GenerationConfig,
    LogitsProcessor,
    TemperatureLogitsWarper,
    TextStreamer,
    pipeline,
)

import rad_q_hf
from rad_q_hf import RADQ, RadPreTrainedModel, RewardAugmentedLogitsProcessor, reward_augmented_generate
from rad_q_hf.decoding import _RadVScorer

MODES = ["batch1", "batch3_left_padded", "num_return_sequences2", "beam2", "eos_early", "top_p", "combined"]


def custom_kwargs(terms, top_k, top_p):
    """The custom route's keywords for the processor's settings (`top_k=0`, as in generate, means no top-k)."""
    k = top_k if top_k is not None else 0
    return dict(custom_generate=reward_augmented_generate, reward_model=terms, top_k=k, top_p=top_p)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("method", ["rad_v", "rad_q"])
def test_custom_generate_matches_explicit_mask_path(method, backbone, mode):
    lm, ids, mask, terms, top_k, top_p, gen = setup_case(method, backbone, mode)
    explicit = RewardAugmentedLogitsProcessor.combine(terms, top_k=top_k, top_p=top_p, attention_mask=mask)
    torch.manual_seed(0)
    expected = lm.generate(ids, attention_mask=mask, logits_processor=[explicit], **gen)
    gen.pop("top_k")  # generate's own top-k warper: the custom route switches it off itself
    torch.manual_seed(0)
    got = lm.generate(ids, attention_mask=mask, **custom_kwargs(terms, top_k, top_p), **gen)
    assert torch.equal(got, expected)


@pytest.mark.parametrize("method", ["rad_v", "rad_q"])
def test_beam_sampling_matches_explicit_mask_path(method):
    lm, ids, mask, terms, top_k, top_p, gen = setup_case(method, "gpt2", "beam2")
    gen["do_sample"] = True  # beam sample: generate's warpers come after the processors here too
    explicit = RewardAugmentedLogitsProcessor.combine(terms, top_k=top_k, top_p=top_p, attention_mask=mask)
    torch.manual_seed(0)
    expected = lm.generate(ids, attention_mask=mask, logits_processor=[explicit], **gen)
    gen.pop("top_k")
    torch.manual_seed(0)
    assert torch.equal(lm.generate(ids, attention_mask=mask, **custom_kwargs(terms, top_k, top_p), **gen), expected)


@pytest.mark.parametrize("mode", ["batch3_left_padded", "num_return_sequences2", "beam2", "combined"])
@pytest.mark.parametrize("method", ["rad_v", "rad_q"])
def test_custom_generate_matches_slow_reference(method, mode, monkeypatch):
    lm, ids, mask, terms, top_k, top_p, gen = setup_case(method, "gpt2", mode)
    calls = record_processor_calls(monkeypatch)
    gen.pop("top_k")
    lm.generate(ids, attention_mask=mask, **custom_kwargs(terms, top_k, top_p), **gen)
    assert len(calls) >= 2
    reference = ReferenceRAD(terms, top_k, top_p, mask)
    for step, (step_ids, raw, processed) in enumerate(calls):
        torch.testing.assert_close(processed, reference(step_ids, raw), rtol=1e-4, atol=1e-4, msg=f"step {step}")


def test_custom_generate_without_any_mask_uses_generates_own():
    """No attention_mask at all: generate infers it from the pad id, and so does RAD (the explicit path refuses)."""
    lm, ids, mask, terms, top_k, top_p, gen = setup_case("rad_q", "gpt2", "batch3_left_padded")
    torch.manual_seed(0)
    expected = lm.generate(
        ids,
        attention_mask=mask,
        logits_processor=[RewardAugmentedLogitsProcessor.combine(terms, 5, None, mask)],
        **gen,
    )
    gen.pop("top_k")
    torch.manual_seed(0)
    assert torch.equal(lm.generate(ids, **custom_kwargs(terms, top_k, top_p), **gen), expected)


def test_temperature_divides_the_lm_logits_not_beta():
    lm, ids, mask, terms, top_k, _, gen = setup_case("rad_q", "llama", "batch3_left_padded")
    rad = RewardAugmentedLogitsProcessor.combine(terms, top_k=top_k, attention_mask=mask)
    torch.manual_seed(0)
    expected = lm.generate(ids, attention_mask=mask, logits_processor=[TemperatureLogitsWarper(0.5), rad], **gen)
    gen.pop("top_k")
    torch.manual_seed(0)
    got = lm.generate(ids, attention_mask=mask, temperature=0.5, **custom_kwargs(terms, top_k, None), **gen)
    assert torch.equal(got, expected)
    # The same from a GenerationConfig object and from the LM's own defaults: they must not divide β either.
    torch.manual_seed(0)
    config = GenerationConfig(temperature=0.5, **gen)
    assert torch.equal(
        lm.generate(ids, attention_mask=mask, generation_config=config, **custom_kwargs(terms, top_k, None)), expected
    )
    lm.generation_config.temperature = 0.5
    torch.manual_seed(0)
    assert torch.equal(lm.generate(ids, attention_mask=mask, **custom_kwargs(terms, top_k, None), **gen), expected)
    torch.manual_seed(0)  # the papers' T = 1, whatever the LM's defaults
    plain = lm.generate(ids, attention_mask=mask, logits_processor=[rad], temperature=1.0, **gen)
    torch.manual_seed(0)
    got = lm.generate(ids, attention_mask=mask, temperature=1.0, **custom_kwargs(terms, top_k, None), **gen)
    assert torch.equal(got, plain)


def test_unset_top_k_is_rads_20_and_top_k_0_scores_the_whole_vocabulary():
    lm, ids, mask, terms, _, _, gen = setup_case("rad_q", "gpt2", "batch3_left_padded")
    gen.pop("top_k")
    for top_k, expected_k in ((None, 20), (7, 7), (0, None)):
        explicit = RewardAugmentedLogitsProcessor.combine(terms, top_k=expected_k, top_p=0.9, attention_mask=mask)
        torch.manual_seed(0)
        expected = lm.generate(ids, attention_mask=mask, logits_processor=[explicit], top_k=0, **gen)
        torch.manual_seed(0)
        kwargs = dict(custom_generate=reward_augmented_generate, reward_model=terms, top_p=0.9)
        if top_k is not None:
            kwargs["top_k"] = top_k
        got = lm.generate(ids, attention_mask=mask, **kwargs, **gen)
        assert torch.equal(got, expected), top_k


def test_vocabularies_padded_to_different_sizes(tokenizer, tmp_path):
    """Pythia-style (LM of 128 rows, reward model of 120, one 120-token tokenizer): the LM's saved tokenizer is read."""
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(BACKBONES["gpt2"](128)).save_pretrained(tmp_path)
    lm = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    rm = spread(build_reward_model("rad_q", "gpt2", V, seed=1))
    ids, mask = prompts([6, 3, 1])
    gen = dict(do_sample=True, max_new_tokens=4, pad_token_id=PAD, custom_generate=reward_augmented_generate)
    with pytest.raises(ValueError, match="pass the LM's `tokenizer=`"):  # no tokenizer saved with the LM
        lm.generate(ids, attention_mask=mask, reward_model=rm, top_k=5, **gen)
    explicit = RADQ(rm, top_k=5, attention_mask=mask, tokenizer=tokenizer)
    torch.manual_seed(0)
    expected = lm.generate(ids, attention_mask=mask, logits_processor=[explicit], **{**gen, "custom_generate": None})
    torch.manual_seed(0)
    got = lm.generate(ids, attention_mask=mask, reward_model=rm, top_k=5, lm_tokenizer=tokenizer, **gen)
    assert torch.equal(got, expected) and int(got.max()) < len(tokenizer)
    tokenizer.save_pretrained(tmp_path)  # or read from the LM's folder
    lm = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    torch.manual_seed(0)
    assert torch.equal(lm.generate(ids, attention_mask=mask, reward_model=rm, top_k=5, **gen), expected)


def test_refuses_what_it_cannot_do():
    lm, ids, mask, terms, top_k, top_p, gen = setup_case("rad_q", "gpt2", "batch1")
    gen.pop("top_k")
    kwargs = custom_kwargs(terms, top_k, top_p)
    with pytest.raises(ValueError, match="assisted"):
        lm.generate(ids, prompt_lookup_num_tokens=2, **kwargs, **gen)
    with pytest.raises(ValueError, match="min_p"):
        lm.generate(ids, min_p=0.1, **kwargs, **gen)
    with pytest.raises(ValueError, match="reward_model="):
        lm.generate(ids, custom_generate=reward_augmented_generate, **gen)
    padded, pad_mask = prompts([4, 2])
    with pytest.raises(ValueError, match="padding_side='left'"):
        lm.generate(padded.flip(1), attention_mask=pad_mask.flip(1), **kwargs, **gen)
    with pytest.raises(ValueError, match="already in `logits_processor`"):
        lm.generate(ids, logits_processor=[RADQ(terms[0].reward_model)], **kwargs, **gen)


def test_saved_reward_model_folder_is_a_custom_generate(tmp_path):
    lm, ids, mask, terms, top_k, _, gen = setup_case("rad_q", "gpt2", "batch3_left_padded")
    terms[0].reward_model.save_pretrained(tmp_path)
    assert (tmp_path / "custom_generate" / "generate.py").is_file()
    gen.pop("top_k")
    torch.manual_seed(0)
    expected = lm.generate(ids, attention_mask=mask, **custom_kwargs(terms, top_k, None), beta=3.0, **gen)
    torch.manual_seed(0)
    got = lm.generate(
        ids, attention_mask=mask, custom_generate=str(tmp_path), trust_remote_code=True, beta=3.0, top_k=5, **gen
    )
    assert torch.equal(got, expected)
    torch.manual_seed(0)  # Hub options reach the reward model's loading, not generate's model kwargs
    kwargs = dict(custom_generate=str(tmp_path), trust_remote_code=True, local_files_only=True, beta=3.0, top_k=5)
    assert torch.equal(lm.generate(ids, attention_mask=mask, **kwargs, **gen), expected)


def test_custom_generate_file_without_the_package_says_so(tmp_path):
    rm = build_reward_model("rad_q", "gpt2", V)
    rm.save_pretrained(tmp_path)
    code = (
        "import sys; sys.modules['rad_q_hf'] = None\n"  # as if the package were not installed
        f"exec(open({str(tmp_path / 'custom_generate' / 'generate.py')!r}).read())"
    )
    env = dict(os.environ, PYTHONPATH="", OMP_NUM_THREADS="1")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=tmp_path)
    assert out.returncode != 0 and "needs the rad_q_hf package" in out.stderr


@pytest.mark.parametrize("method", ["rad_v", "rad_q"])
def test_caches_are_freed_after_generate(method, monkeypatch):
    lm, ids, mask, terms, top_k, _, gen = setup_case(method, "gpt2", "batch3_left_padded")
    caches = []
    encode = RadPreTrainedModel.encode

    def tracking(self, *args, **kwargs):
        hidden, cache = encode(self, *args, **kwargs)
        caches.append(weakref.ref(cache))
        return hidden, cache

    monkeypatch.setattr(RadPreTrainedModel, "encode", tracking)
    gen.pop("top_k")
    lm.generate(ids, attention_mask=mask, **custom_kwargs(terms, top_k, None), **gen)
    gc.collect()
    assert caches and all(ref() is None for ref in caches)
    # The explicit processor keeps its caches until reset().
    caches.clear()
    proc = RewardAugmentedLogitsProcessor.combine(terms, top_k=top_k, attention_mask=mask)
    lm.generate(ids, attention_mask=mask, logits_processor=[proc], top_k=0, **gen)
    gc.collect()
    assert any(ref() is not None for ref in caches)
    proc.reset()
    gc.collect()
    assert all(ref() is None for ref in caches)


def test_pipeline_batches_with_the_mask_free_route(tokenizer):
    lm = build_lm("gpt2")
    rm = spread(build_reward_model("rad_q", "gpt2", V, seed=1))
    texts = ["the movie was great and", "you", "I love this"]
    pipe = pipeline("text-generation", model=lm, tokenizer=tokenizer, batch_size=3)
    gen = dict(do_sample=False, max_new_tokens=4, pad_token_id=PAD, return_full_text=False)
    batched = pipe(texts, custom_generate=reward_augmented_generate, reward_model=rm, beta=5.0, top_k=5, **gen)
    for text, out in zip(texts, batched, strict=True):  # one prompt at a time: no padding at all
        alone = pipe([text], custom_generate=reward_augmented_generate, reward_model=rm, beta=5.0, top_k=5, **gen)
        assert out[0]["generated_text"] == alone[0][0]["generated_text"]
    with pytest.raises(ValueError, match="custom_generate"):  # the explicit processor cannot see pipeline's mask
        pipe(texts, logits_processor=[RADQ(rm, beta=5.0, top_k=5)], top_k=0, **gen)


def test_readme_quick_start_shape(tokenizer):
    """The README's first example, on the tiny models."""
    lm, rm = build_lm("llama"), build_reward_model("rad_q", "llama", V)
    batch = tokenizer(["the movie was", "you are a kind"], return_tensors="pt", padding=True)
    out = lm.generate(
        **batch,
        custom_generate=rad_q_hf.reward_augmented_generate,
        reward_model=rm,
        beta=10.0,
        top_k=5,
        direction="minimize",
        do_sample=True,
        max_new_tokens=3,
        min_new_tokens=3,
        pad_token_id=PAD,
    )
    assert out.shape == (2, batch["input_ids"].shape[1] + 3)


@pytest.mark.parametrize("route", ["callable", "folder"])
def test_streamer_sees_every_new_token(tokenizer, capsys, tmp_path, route):
    """generate drops `streamer=` before calling a custom_generate callable; the route reads it back."""
    lm, rm = build_lm("llama"), build_reward_model("rad_q", "llama", V)
    rm.save_pretrained(tmp_path)
    batch = tokenizer(["the movie was"], return_tensors="pt")
    source = dict(custom_generate=reward_augmented_generate, reward_model=rm)
    if route == "folder":
        source = dict(custom_generate=str(tmp_path), trust_remote_code=True)
    torch.manual_seed(0)
    out = lm.generate(
        **batch, streamer=TextStreamer(tokenizer), do_sample=True, max_new_tokens=4, pad_token_id=PAD, **source
    )
    assert capsys.readouterr().out.strip() == tokenizer.decode(out[0]).strip()
    assert out.shape[1] > batch["input_ids"].shape[1]


class ForceToken(LogitsProcessor):
    """Placed after RAD: forces `token` on row `row` at `step` (a token RAD gave −inf)."""

    def __init__(self, token, prompt_len, step, row):
        self.token, self.at, self.row = token, prompt_len + step, row

    def __call__(self, input_ids, scores):
        if input_ids.shape[1] == self.at:
            scores = scores.clone()
            scores[self.row] = -float("inf")
            scores[self.row, self.token] = 0.0
        return scores


def test_rad_v_reencodes_a_row_whose_token_was_forced_after_it():
    lm, ids, mask, terms, top_k, _, gen = setup_case("rad_v", "gpt2", "batch3_left_padded")
    recorder = Recorder(RewardAugmentedLogitsProcessor.combine(terms, top_k=top_k, attention_mask=mask))
    forced = 117  # a rarely likely id: outside the top-5 of most rows
    force = ForceToken(forced, ids.shape[1], 1, row=1)
    lm.generate(ids, attention_mask=mask, logits_processor=[recorder, force], **gen)
    calls = recorder.calls
    assert calls[2][0][1, ids.shape[1] + 1] == forced
    assert not calls[1][2][1, forced].isfinite()  # RAD did not offer it: the cache had no row for it
    reference = ReferenceRAD(terms, top_k, None, mask)
    for step, (s_ids, raw, processed) in enumerate(calls):
        torch.testing.assert_close(processed, reference(s_ids, raw), rtol=1e-4, atol=1e-4, msg=f"step {step}")


def test_finished_rows_are_not_re_encoded(monkeypatch):
    """RAD-V re-encodes a row only when its new token was none of its candidates (a processor after RAD forced it).
    The pad that generate appends to a finished row is not such a token: re-encoding it would cost a forward and a
    host sync per step, for scores that generate discards."""
    lm, ids, mask, terms, top_k, _, gen = setup_case("rad_v", "gpt2", "eos_early")
    reencoded, step = [], _RadVScorer.step

    def spy(self, *args, reencode=None, **kwargs):
        reencoded.append(0 if reencode is None else len(reencode[1]))
        return step(self, *args, reencode=reencode, **kwargs)

    monkeypatch.setattr(_RadVScorer, "step", spy)
    gen.pop("top_k")
    gen["eos_token_id"] = list(range(3, V, 8))  # fewer ends than the matrix's mode: rows finish at different steps
    torch.manual_seed(0)
    out = lm.generate(
        ids, attention_mask=mask, custom_generate=reward_augmented_generate, reward_model=terms, top_k=top_k, **gen
    )
    pads = (out[:, ids.shape[1] :] == PAD).sum(-1)  # (N,) steps each row spent finished
    assert pads.max() >= 2 and len(reencoded) >= 3, (pads, reencoded)  # steps went on after a row finished
    assert sum(reencoded) == 0, reencoded
