"""RAD-V / RAD-Q reward models on tiny random backbones: method × backbone matrix."""

import json
import subprocess
import sys
import textwrap

import pytest
import torch
from conftest import BACKBONES, build_reward_model, gpt2_config, llama_config
from transformers import AutoConfig, AutoModel, AutoModelForCausalLM

from rad_q_hf import RadQConfig, RadQForRewardModeling, RadVConfig, RadVForRewardModeling

V = 120
PAD = 2


def random_batch(lengths, vocab=V, seed=0, pad_side="left"):
    """Token ids in [3, vocab) with the given real lengths, padded with PAD on one side. Returns ids, mask."""
    g = torch.Generator().manual_seed(seed)
    T = max(lengths)
    ids = torch.full((len(lengths), T), PAD)
    mask = torch.zeros(len(lengths), T, dtype=torch.long)
    for i, n in enumerate(lengths):
        span = slice(T - n, T) if pad_side == "left" else slice(0, n)
        ids[i, span] = torch.randint(3, vocab, (n,), generator=g)
        mask[i, span] = 1
    return ids, mask


def all_rewards(model, ids, mask=None, **kwargs):
    """Rewards of every prefix (RAD-V) or of every prefix × vocabulary token (RAD-Q)."""
    with torch.no_grad():
        return model(ids, attention_mask=mask, use_cache=False, **kwargs).rewards


def test_reward_shapes(kind, backbone):
    model = build_reward_model(kind, backbone, V)
    ids, mask = random_batch([5, 3])
    rewards = all_rewards(model, ids, mask)
    if kind == "rad_v":
        assert rewards.shape == (2, 5, 2)
    else:
        assert rewards.shape == (2, 5, 2, V)
        query = torch.randint(0, V, (2, 5, 7))
        assert all_rewards(model, ids, mask, query_ids=query).shape == (2, 5, 2, 7)


@pytest.mark.parametrize("kind", ["rad_q", "rad_q_no_baseline"])
def test_rad_q_queried_rewards_equal_full_vocabulary(kind, backbone):
    model = build_reward_model(kind, backbone, V)
    ids, mask = random_batch([6, 4, 2])
    full = all_rewards(model, ids, mask)  # (B, T, L, V)
    query = torch.randint(0, V, (3, 6, 9))
    queried = all_rewards(model, ids, mask, query_ids=query)  # (B, T, L, k)
    expected = full.gather(-1, query[:, :, None, :].expand(-1, -1, 2, -1))
    torch.testing.assert_close(queried, expected, rtol=1e-5, atol=1e-6)


def rad_v_reward_matrix(model, prefixes):
    """R[i, v] = RAD-V(prefix_i ⊕ v), label 0, by brute force over the whole vocabulary."""
    n, t = prefixes.shape
    seqs = torch.cat([prefixes.repeat_interleave(V, 0), torch.arange(V).repeat(n)[:, None]], dim=1)  # (n·V, t+1)
    return all_rewards(model, seqs)[:, -1, 0].view(n, V)


def test_rad_q_reward_matrix_rank_is_bounded_and_rad_v_is_not(backbone):
    """The paper's structural claim: rank(R_RAD-Q) ≤ d + 1 over prefixes × tokens; RAD-V has no such bound."""
    d = BACKBONES[backbone](V).hidden_size
    ids, _ = random_batch([12] * 8, seed=1)
    for kind in ("rad_q", "rad_q_no_baseline"):
        model = build_reward_model(kind, backbone, V).double()
        R = all_rewards(model, ids)[:, :, 0, :].reshape(-1, V)  # (96 prefixes, V) with 96, V > d + 1
        rank = torch.linalg.matrix_rank(R).item()
        assert d - 2 <= rank <= d + 1, (kind, rank)
    rad_v = build_reward_model("rad_v", backbone, V).double()
    prefixes, _ = random_batch([5] * 48, seed=2)
    R_v = rad_v_reward_matrix(rad_v, prefixes)  # (48, V)
    assert torch.linalg.matrix_rank(R_v).item() > d + 1


@pytest.mark.parametrize("pad_side", ["left", "right"])
def test_padding_does_not_change_rewards(kind, backbone, pad_side):
    model = build_reward_model(kind, backbone, V)
    ids, mask = random_batch([7, 4, 1], pad_side=pad_side)
    batched = all_rewards(model, ids, mask)
    for i in range(3):
        real = mask[i].bool()
        alone = all_rewards(model, ids[i : i + 1, real])[0]
        torch.testing.assert_close(batched[i, real], alone, rtol=1e-4, atol=1e-5)


def test_cached_forward_matches_full_forward_with_left_padding(kind, backbone):
    """Prefill, then one token at a time with a growing mask, equals one uncached pass over everything."""
    model = build_reward_model(kind, backbone, V)
    ids, mask = random_batch([9, 6, 3])
    full = all_rewards(model, ids, mask)
    prefill = 5
    with torch.no_grad():
        out = model(ids[:, :prefill], attention_mask=mask[:, :prefill], use_cache=True)
        steps, cache = [out.rewards], out.cache
        for t in range(prefill, ids.shape[1]):
            out = model(ids[:, t : t + 1], attention_mask=mask[:, : t + 1], cache=cache, use_cache=True)
            steps.append(out.rewards)
            cache = out.cache
    cached = torch.cat(steps, dim=1)
    real = mask.bool()
    torch.testing.assert_close(cached[real], full[real], rtol=1e-4, atol=1e-5)


def slow_cumulative_mse(per_prefix, labels):
    """The formula, one text at a time: Σ_t 2t/(L(L+1)) Σ_j (r_tj − y_j)², averaged over texts."""
    total = 0.0
    for r, y in zip(per_prefix, labels, strict=True):
        L = len(r)
        total += sum(2 * t / (L * (L + 1)) * ((r[t - 1] - y) ** 2).sum() for t in range(1, L + 1))
    return total / len(per_prefix)


@pytest.mark.parametrize("pad_side", ["left", "right"])
def test_rad_v_loss_equals_slow_formula(backbone, pad_side):
    model = build_reward_model("rad_v", backbone, V)
    ids, mask = random_batch([8, 5, 2, 6], pad_side=pad_side)
    labels = torch.tensor([[0.9, 0.1], [0.0, 1.0], [0.5, 0.5], [1.0, 0.3]])
    with torch.no_grad():
        out = model(ids, attention_mask=mask, labels=labels)
    per_prefix = [out.rewards[i, mask[i].bool()] for i in range(len(ids))]
    torch.testing.assert_close(out.loss, slow_cumulative_mse(per_prefix, labels), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("pad_side", ["left", "right"])
@pytest.mark.parametrize("kind", ["rad_q", "rad_q_no_baseline"])
def test_rad_q_teacher_forced_loss_equals_slow_formula(kind, backbone, pad_side):
    """Given BOS + text, prefix x≤t is scored by the reward of the observed x_t after BOS + x<t."""
    model = build_reward_model(kind, backbone, V)
    ids, mask = random_batch([8, 5, 3, 6], seed=4, pad_side=pad_side)
    bos_col = mask.long().argmax(-1)  # first real position of each left-padded row
    ids[torch.arange(4), bos_col] = 0  # BOS
    labels = torch.rand(4, 2)
    with torch.no_grad():
        loss = model(ids, attention_mask=mask, labels=labels).loss
    per_prefix = []
    for i in range(4):
        row = ids[i, mask[i].bool()]  # BOS, x_1..x_L
        full = all_rewards(model, row[None])[0]  # (L+1, n_labels, V)
        per_prefix.append(torch.stack([full[t - 1, :, row[t]] for t in range(1, len(row))]))  # (L, n_labels)
    torch.testing.assert_close(loss, slow_cumulative_mse(per_prefix, labels), rtol=1e-5, atol=1e-6)


def test_save_load_round_trip_and_auto_classes(kind, backbone, tmp_path):
    model = build_reward_model(kind, backbone, V)
    ids, mask = random_batch([6, 3])
    model.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["model_type"] == model.config.model_type
    assert config["auto_map"]["AutoModel"].endswith(type(model).__name__)
    loaded = AutoModel.from_pretrained(tmp_path).eval()
    assert type(loaded) is type(model)
    assert loaded.config.label_names == ["a", "b"]
    torch.testing.assert_close(all_rewards(loaded, ids, mask), all_rewards(model, ids, mask), rtol=0, atol=0)
    assert type(AutoConfig.for_model(model.config.model_type)) is type(model.config)
    assert type(AutoModel.from_config(model.config)) is type(model)


def test_trust_remote_code_load_without_the_package(kind, tmp_path):
    """A checkpoint carries its code: a process where `rad_q_hf` cannot be imported still loads it."""
    model = build_reward_model(kind, "gpt2", V)
    ids, mask = random_batch([6, 3])
    model.save_pretrained(tmp_path / "ckpt")
    torch.save({"ids": ids, "mask": mask, "rewards": all_rewards(model, ids, mask)}, tmp_path / "expected.pt")
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
        torch.testing.assert_close(got, e["rewards"], rtol=0, atol=0)
        print("OK", type(model).__name__)
        """
    )
    env = {"HF_MODULES_CACHE": str(tmp_path / "modules"), "HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin"}
    res = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert res.returncode == 0, res.stderr[-3000:]
    assert f"OK {type(model).__name__}" in res.stdout


@pytest.mark.parametrize("model_cls", [RadVForRewardModeling, RadQForRewardModeling])
def test_from_backbone_takes_pretrained_weights_and_truncates(model_cls, backbone, tmp_path):
    torch.manual_seed(0)
    lm = AutoModelForCausalLM.from_config(BACKBONES[backbone](V)).eval()
    lm.save_pretrained(tmp_path)
    model = model_cls.from_backbone(str(tmp_path), labels=["toxicity"], num_layers=1)
    assert model.config.backbone_config.num_hidden_layers == 1 and model.config.num_layers == 1
    assert model.config.label_names == ["toxicity"]
    lm_state = lm.state_dict()
    backbone_state = model.backbone.state_dict()
    prefix = lm.base_model_prefix
    assert len(backbone_state) > 0
    for key, value in backbone_state.items():
        torch.testing.assert_close(value, lm_state[f"{prefix}.{key}"], rtol=0, atol=0)
    if model_cls is RadQForRewardModeling:
        torch.testing.assert_close(model.token_embeddings, lm.get_output_embeddings().weight, rtol=0, atol=0)
        assert not model.token_embeddings.requires_grad
        assert not model.get_input_embeddings().weight.requires_grad
        assert model.reward_head.weight.requires_grad
    else:
        assert model.get_input_embeddings().weight.requires_grad


def test_frozen_embeddings_survive_reload(backbone, tmp_path):
    build_reward_model("rad_q", backbone, V).save_pretrained(tmp_path)
    loaded = AutoModel.from_pretrained(tmp_path)
    assert not loaded.token_embeddings.requires_grad
    unfrozen = RadQForRewardModeling(RadQConfig(backbone_config=gpt2_config(V), freeze_embeddings=False))
    assert unfrozen.token_embeddings.requires_grad


def test_bad_inputs_raise_named_errors():
    model = build_reward_model("rad_q", "gpt2", V, labels=("toxicity",))
    ids, mask = random_batch([4, 4])
    with pytest.raises(ValueError, match=r"`labels` must have shape \(batch, n_labels\)"):
        model(ids, labels=torch.ones(2, 3))
    with pytest.raises(ValueError, match=r"`query_ids` must have shape"):
        model(ids, query_ids=torch.zeros(2, 5, dtype=torch.long))
    with pytest.raises(ValueError, match="not both"):
        model(ids, query_ids=torch.zeros(2, 4, 1, dtype=torch.long), labels=torch.ones(2, 1))
    with pytest.raises(ValueError, match=r"`input_ids` must have shape \(batch, seq_len\)"):
        model(ids[0])
    with pytest.raises(ValueError, match="Unknown label 'sentiment'"):
        model.config.label_index("sentiment")
    assert model.config.label_index("toxicity") == 0
    with pytest.raises(ValueError, match="num_layers"):
        RadVConfig(backbone_config=llama_config(V), num_layers=3)
    with pytest.raises(ValueError, match="model_type"):
        RadVConfig(backbone_config={"hidden_size": 8})
    with pytest.raises(ValueError, match="distinct"):
        RadVConfig(backbone_config=gpt2_config(V), label_names=["x", "x"])
    with pytest.raises(ValueError, match="backbone_config"):
        RadVForRewardModeling(RadVConfig())


def test_fresh_rad_q_scores_like_its_baseline():
    """W starts at 0: before training every next token gets the prefix's baseline bᵀh_t, a value-model start."""
    model = RadQForRewardModeling(RadQConfig(backbone_config=gpt2_config(V))).eval()
    ids, mask = random_batch([5, 3])
    out = model(ids, attention_mask=mask)
    torch.testing.assert_close(out.rewards, out.baselines[..., None].expand_as(out.rewards))
    assert out.baselines.abs().max() > 0


# --------------------------------------------------------------------------- configs and outputs like transformers'


@pytest.mark.parametrize("kind", ["rad_v", "rad_q"])
def test_resize_token_embeddings_save_reload_round_trip(kind, backbone, tmp_path):
    # `resize_token_embeddings` sets `config.vocab_size`: it raised on the read-only property, and a model whose
    # backbone config kept the old size did not reload.
    model = build_reward_model(kind, backbone, V)
    model.resize_token_embeddings(V + 8, mean_resizing=False)
    assert model.config.vocab_size == model.config.backbone_config.vocab_size == V + 8
    assert model.get_input_embeddings().weight.shape[0] == V + 8
    if kind == "rad_q":  # E (untied on Llama: its own copy) has a row for every new token, and stays frozen
        assert model.token_embeddings.shape[0] == V + 8 and not model.token_embeddings.requires_grad
    model.save_pretrained(tmp_path)
    loaded = AutoModel.from_pretrained(tmp_path).eval()
    ids = torch.tensor([[5, 6, V + 3, V + 7]])  # new ids included
    torch.testing.assert_close(loaded(ids).rewards, model(ids).rewards, rtol=0, atol=0)
    model.config.hidden_size = 64  # the other write-through property
    assert model.config.backbone_config.hidden_size == 64


def test_from_pretrained_attn_implementation_and_dtype_reach_the_backbone(kind, tmp_path):
    build_reward_model(kind, "llama", V).save_pretrained(tmp_path)
    for attn in ("eager", "sdpa"):
        model = AutoModel.from_pretrained(tmp_path, attn_implementation=attn)
        assert model.config._attn_implementation == attn
        assert model.config.backbone_config._attn_implementation == attn
        assert model.backbone.config._attn_implementation == attn
    model = AutoModel.from_pretrained(tmp_path, dtype=torch.bfloat16)
    assert model.backbone.get_input_embeddings().weight.dtype == torch.bfloat16
    assert model.config.backbone_config.dtype == torch.bfloat16


def test_hidden_states_mean_what_they_mean_in_transformers(kind, backbone):
    model = build_reward_model(kind, backbone, V)
    model.set_attn_implementation("eager")  # attention weights exist only in eager attention
    ids, mask = random_batch([5, 3])
    out = model(ids, attention_mask=mask)
    assert out.hidden_states is None and out.attentions is None  # only on request, as in transformers
    assert out.last_hidden_state.shape == (2, 5, 32)
    out = model(ids, attention_mask=mask, output_hidden_states=True, output_attentions=True)
    positions = (mask.cumsum(-1) - 1).clamp(min=0)  # the padding-aware positions the reward model uses
    reference = model.backbone(ids, attention_mask=mask, position_ids=positions, output_hidden_states=True)
    assert len(out.hidden_states) == model.config.backbone_config.num_hidden_layers + 1  # embeddings + each layer
    torch.testing.assert_close(out.hidden_states[-1], out.last_hidden_state)
    for got, expected in zip(out.hidden_states, reference.hidden_states, strict=True):
        torch.testing.assert_close(got, expected)
    assert len(out.attentions) == model.config.backbone_config.num_hidden_layers
    as_tuple = model(ids, attention_mask=mask, use_cache=False, return_dict=False)
    assert isinstance(as_tuple, tuple)
    torch.testing.assert_close(as_tuple[0], out.rewards)


def test_forward_refuses_arguments_it_would_ignore(kind):
    model = build_reward_model(kind, "gpt2", V)
    with pytest.raises(TypeError, match="token_type_idz"):
        model(torch.tensor([[5, 6]]), token_type_idz=torch.tensor([[0, 0]]))
