"""RewardRegressionTrainer / DistillationTrainer against slow, per-example implementations of METHOD.md's losses."""

import shutil

import pytest
import torch
from conftest import build_reward_model
from datasets import Dataset
from safetensors.torch import load_file, save_file
from torch.utils._python_dispatch import TorchDispatchMode
from transformers import AutoModel, TrainerCallback

from rad_q_hf.data import DataError, RewardDataCollator
from rad_q_hf.scoring import prefix_rewards
from rad_q_hf.training import (
    DistillationConfig,
    DistillationTrainer,
    RewardRegressionTrainer,
    RewardTrainingConfig,
    lora_config,
)
from rad_q_hf.training.adapters import from_peft_name
from rad_q_hf.training.reward_trainer import baseline_prior

VOCAB = 120
BOS = 0


def make_data(n: int, num_labels: int = 2, seed: int = 0, max_len: int = 12) -> Dataset:
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(1, max_len + 1, (n,), generator=g).tolist()
    ids = [torch.randint(3, VOCAB, (L,), generator=g).tolist() for L in lengths]
    labels = torch.rand(n, num_labels, generator=g).tolist()
    return Dataset.from_dict({"input_ids": ids, "labels": labels})


def args(tmp_path, config_class=RewardTrainingConfig, **kwargs) -> RewardTrainingConfig:
    defaults = dict(
        output_dir=str(tmp_path / "out"),
        report_to="none",
        disable_tqdm=True,
        use_cpu=True,
        save_strategy="no",
        logging_steps=1,
        dataloader_pin_memory=False,
        per_device_train_batch_size=8,
    )
    return config_class(**{**defaults, **kwargs})


def slow_loss(model, rows) -> torch.Tensor:
    """METHOD.md §2/§5a literally: one unpadded forward per prefix, Python loops."""
    rad_q = model.config.model_type == "rad_q"
    total = 0.0
    for row in rows:
        x, y = row["input_ids"], torch.tensor(row["labels"])
        L = len(x)
        for t in range(1, L + 1):
            if rad_q:  # reward of the observed x_t after BOS + x<t
                ids = torch.tensor([[BOS] + x[: t - 1]])
                r = model(ids, query_ids=torch.tensor([[[x[t - 1]]] * t])).rewards[0, -1, :, 0]
            else:
                r = model(torch.tensor([x[:t]])).rewards[0, -1]
            total = total + 2 * t / (L * (L + 1)) * (r - y).pow(2).sum()
    return total / len(rows)


def test_vectorised_loss_matches_per_example_formula(kind, backbone, tmp_path):
    model = build_reward_model(kind, backbone, VOCAB)
    data = make_data(7)
    trainer = RewardRegressionTrainer(model, args(tmp_path), train_dataset=data)
    batch = RewardDataCollator(pad_token_id=2)([data[i] for i in range(len(data))])
    model.eval()
    loss = trainer.compute_loss(model, batch)
    torch.testing.assert_close(loss, slow_loss(model, data), rtol=1e-5, atol=1e-6)
    if kind != "rad_v":  # the trainer's RAD-Q path equals the model's own teacher-forced loss (BOS put in front)
        ids = torch.cat([torch.zeros(len(data), 1, dtype=torch.long), batch["input_ids"]], 1)
        mask = torch.cat([torch.ones(len(data), 1, dtype=torch.long), batch["attention_mask"]], 1)
        torch.testing.assert_close(loss, model(ids, attention_mask=mask, labels=batch["labels"]).loss)


def test_baseline_prior_is_the_token_specific_part(backbone):
    model = build_reward_model("rad_q", backbone, VOCAB)
    data = make_data(3)
    batch = RewardDataCollator(pad_token_id=2)([data[i] for i in range(3)])
    B, T = batch["input_ids"].shape
    extra = torch.randint(VOCAB, (B, T + 1, 1))
    _, out = prefix_rewards(model, batch["input_ids"], batch["attention_mask"], extra)
    hidden = out.last_hidden_state  # (B, T + 1, d)
    d = hidden.shape[-1]
    W = model.reward_head.weight.view(2, d, d)  # (L, d, d)
    e = model.token_embeddings[extra[..., 0]]  # (B, T + 1, d)
    token_part = torch.einsum("btd,lde,bte->btl", e, W, hidden)  # e_vᵀ W_j h_t
    mask = torch.cat([torch.ones(B, 1), batch["attention_mask"].float()], 1)
    expected = (token_part.pow(2).sum(-1) * mask).sum() / mask.sum()
    torch.testing.assert_close(baseline_prior(out, batch["attention_mask"]), expected, rtol=1e-5, atol=1e-7)


class GradCapture(TrainerCallback):
    def on_pre_optimizer_step(self, args, state, control, model=None, **kwargs):
        self.grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("kind", ["rad_v", "rad_q"])
def test_gradient_accumulation_equals_one_big_batch(kind, tmp_path):
    data = make_data(100, seed=1)
    results = []
    for batch_size, accumulation in [(100, 1), (50, 2)]:
        model = build_reward_model(kind, "llama", VOCAB)
        capture = GradCapture()
        config = args(
            tmp_path,
            per_device_train_batch_size=batch_size,
            gradient_accumulation_steps=accumulation,
            max_steps=1,
            max_grad_norm=1e9,
        )
        trainer = RewardRegressionTrainer(model, config, train_dataset=data, callbacks=[capture])
        loss = trainer.train().training_loss
        results.append((loss, capture.grads))
    (loss_a, grads_a), (loss_b, grads_b) = results
    assert loss_a == pytest.approx(loss_b, rel=1e-5)
    assert grads_a.keys() == grads_b.keys() and grads_a
    for name in grads_a:
        torch.testing.assert_close(grads_b[name], grads_a[name], rtol=1e-4, atol=1e-7, msg=name)


class LargestTensor(TorchDispatchMode):
    """Records the largest tensor any op produces (forward and backward): a device-independent memory probe."""

    largest = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else [out]:
            if isinstance(t, torch.Tensor):
                self.largest = max(self.largest, t.numel() * t.element_size())
        return out


def largest_training_tensor(model, vocab_size: int, full_vocabulary: bool = False) -> int:
    data = make_data(4, seed=3)
    batch = RewardDataCollator(pad_token_id=2)([data[i] for i in range(4)])
    B, T = batch["input_ids"].shape
    with LargestTensor() as probe:
        if full_vocabulary:  # what a naive implementation does: score all of V, then pick the observed tokens
            ids = torch.cat([torch.zeros(B, 1, dtype=torch.long), batch["input_ids"]], 1)
            model(ids).rewards.sum().backward()
        else:
            extra = torch.randint(vocab_size, (B, T + 1, 1))
            _, out = prefix_rewards(model, batch["input_ids"], batch["attention_mask"], extra)
            (out.rewards.sum() + baseline_prior(out, batch["attention_mask"])).backward()
    return probe.largest


def test_rad_q_training_memory_does_not_grow_with_vocabulary():
    # d = 32 < |V|: with frozen E no (B, T, |V|) tensor may appear, in the forward or the backward pass.
    small, large = (build_reward_model("rad_q", "gpt2", v).train() for v in (VOCAB, 50 * VOCAB))
    assert largest_training_tensor(small, VOCAB) == largest_training_tensor(large, 50 * VOCAB)
    # The probe does see vocabulary-sized tensors when they exist.
    assert largest_training_tensor(large, 50 * VOCAB, True) > 10 * largest_training_tensor(small, VOCAB, True)


def test_eval_logs_loss_last_token_mse_and_accuracy(tmp_path):
    model = build_reward_model("rad_v", "gpt2", VOCAB, labels=("toxicity",))
    data = make_data(10, num_labels=1, seed=4)
    trainer = RewardRegressionTrainer(model, args(tmp_path, per_device_eval_batch_size=4), eval_dataset=data)
    metrics = trainer.evaluate()
    model.eval()
    with torch.no_grad():
        preds = torch.stack([model(torch.tensor([r["input_ids"]])).rewards[0, -1, 0] for r in data])
    labels = torch.tensor(data["labels"])[:, 0]
    assert metrics["eval_mse"] == pytest.approx(float((preds - labels).pow(2).mean()), rel=1e-5)
    assert metrics["eval_accuracy"] == pytest.approx(float(((preds >= 0.5) == (labels >= 0.5)).float().mean()))
    with torch.no_grad():
        assert metrics["eval_loss"] == pytest.approx(float(slow_loss(model, data)), rel=1e-5)


def test_training_reduces_eval_mse(tmp_path):
    """A learnable rule (label = whether token 7 occurs) is fitted by both methods."""
    g = torch.Generator().manual_seed(0)
    rows = [torch.randint(3, 20, (int(n),), generator=g).tolist() for n in torch.randint(3, 9, (200,), generator=g)]
    data = Dataset.from_dict({"input_ids": rows, "labels": [[float(7 in r)] for r in rows]})
    for kind in ("rad_v", "rad_q"):
        model = build_reward_model(kind, "llama", VOCAB, labels=("y",))
        config = args(
            tmp_path, learning_rate=3e-3, num_train_epochs=8, per_device_train_batch_size=20, regularizer_weight=0.1
        )
        trainer = RewardRegressionTrainer(model, config, train_dataset=data, eval_dataset=data)
        before = trainer.evaluate()["eval_mse"]
        trainer.train()
        after = trainer.evaluate()
        assert after["eval_mse"] < 0.5 * before and after["eval_accuracy"] > 0.8, (kind, before, after)


def test_rad_q_keeps_embeddings_frozen(tmp_path):
    model = build_reward_model("rad_q", "gpt2", VOCAB)
    E = model.token_embeddings.detach().clone()
    RewardRegressionTrainer(
        model, args(tmp_path, max_steps=2, learning_rate=1e-2), train_dataset=make_data(16)
    ).train()
    torch.testing.assert_close(model.token_embeddings, E, rtol=0, atol=0)


class StopAt(TrainerCallback):
    def __init__(self, step: int):
        self.step = step

    def on_step_end(self, args, state, control, **kwargs):
        control.should_training_stop = state.global_step >= self.step


def test_resume_continues_from_saved_step(tmp_path):
    data = make_data(64, seed=5)
    common = dict(max_steps=6, learning_rate=1e-3, regularizer_weight=1.0, save_strategy="steps", save_steps=3)
    straight = build_reward_model("rad_q", "gpt2", VOCAB)
    RewardRegressionTrainer(straight, args(tmp_path / "a", **common), train_dataset=data).train()

    first = build_reward_model("rad_q", "gpt2", VOCAB)  # the same run, interrupted after its step-3 checkpoint
    RewardRegressionTrainer(first, args(tmp_path / "b", **common), train_dataset=data, callbacks=[StopAt(3)]).train()
    resumed = build_reward_model("rad_q", "gpt2", VOCAB)
    trainer = RewardRegressionTrainer(resumed, args(tmp_path / "b", **common), train_dataset=data)
    trainer.train(resume_from_checkpoint=str(tmp_path / "b" / "out" / "checkpoint-3"))
    assert trainer.state.global_step == 6
    for (name, a), b in zip(straight.state_dict().items(), resumed.state_dict().values(), strict=True):
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-6, msg=name)


@pytest.mark.parametrize("kind", ["rad_v", "rad_q"])
def test_lora_checkpoint_loads_with_automodel_and_resumes(kind, backbone, tmp_path):
    model = build_reward_model(kind, backbone, VOCAB)
    frozen = {n: p.detach().clone() for n, p in model.backbone.named_parameters()}
    data = make_data(32, seed=6)
    config = args(tmp_path, max_steps=2, learning_rate=1e-2, save_strategy="steps", save_steps=2)
    trainer = RewardRegressionTrainer(model, config, train_dataset=data, peft_config=lora_config(r=4, alpha=8))
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all(".lora_" in n or n.split(".")[0].endswith("_head") for n in trainable)
    trainer.train()
    for n, p in model.backbone.named_parameters():  # the base weights never move
        if ".lora_" not in n:
            torch.testing.assert_close(p, frozen[n.replace(".base_layer", "")], rtol=0, atol=0)

    checkpoint = tmp_path / "out" / "checkpoint-2"
    loaded = AutoModel.from_pretrained(checkpoint).eval()
    assert type(loaded) is type(model)
    model.eval()
    ids = torch.tensor([[0, 5, 6, 7, 8]])
    torch.testing.assert_close(loaded(ids).rewards, model(ids).rewards, rtol=1e-5, atol=1e-6)
    merged_changed = any(
        not torch.equal(v, frozen[k[len("backbone.") :]])
        for k, v in loaded.state_dict().items()
        if k.startswith("backbone.") and k[len("backbone.") :] in frozen
    )
    assert merged_changed  # the LoRA update was merged in, not dropped

    # The adapter is in peft's own format: peft loads it onto the untrained model (same seed: same base weights).
    from peft import PeftModel

    adapter = PeftModel.from_pretrained(build_reward_model(kind, backbone, VOCAB), checkpoint / "adapter").eval()
    with torch.no_grad():
        torch.testing.assert_close(adapter(ids).rewards, model(ids).rewards, rtol=1e-5, atol=1e-6)

    fresh = build_reward_model(kind, backbone, VOCAB)
    resumed = RewardRegressionTrainer(
        fresh,
        args(tmp_path, max_steps=3, learning_rate=1e-2),
        train_dataset=data,
        peft_config=lora_config(r=4, alpha=8),
    )
    resumed._load_from_checkpoint(str(checkpoint))
    saved = load_file(checkpoint / "adapter" / "adapter_model.safetensors")  # peft's names
    trained = {n: p for n, p in fresh.named_parameters() if p.requires_grad}
    assert {from_peft_name(k) for k in saved} == trained.keys()
    for key, value in saved.items():
        torch.testing.assert_close(trained[from_peft_name(key)].detach(), value, rtol=0, atol=0)
    resumed.train(resume_from_checkpoint=str(checkpoint))
    assert resumed.state.global_step == 3

    # A checkpoint from before adapters were in peft's format (its trainable tensors under the model's own names in
    # trainable_state.safetensors, no adapter/) resumes to the same tensors.
    legacy = tmp_path / "legacy-checkpoint-2"
    shutil.copytree(checkpoint, legacy)
    shutil.rmtree(legacy / "adapter")
    save_file({from_peft_name(k): v for k, v in saved.items()}, legacy / "trainable_state.safetensors")
    old = build_reward_model(kind, backbone, VOCAB)
    trainer = RewardRegressionTrainer(
        old, args(tmp_path, max_steps=3), train_dataset=data, peft_config=lora_config(r=4, alpha=8)
    )
    trainer._load_from_checkpoint(str(legacy))
    now = {n: p.detach() for n, p in old.named_parameters() if p.requires_grad}
    assert now.keys() == {from_peft_name(k) for k in saved}
    for key, value in saved.items():
        torch.testing.assert_close(now[from_peft_name(key)], value, rtol=0, atol=0)
    (legacy / "trainable_state.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="not saved from a LoRA run"):
        trainer._load_from_checkpoint(str(legacy))


def test_bad_datasets_raise_named_errors(tmp_path):
    model = build_reward_model("rad_v", "gpt2", VOCAB)  # labels ("a", "b")
    with pytest.raises(DataError, match="tokenize"):
        RewardRegressionTrainer(
            model, args(tmp_path), train_dataset=Dataset.from_dict({"text": ["hi"], "labels": [[0.1, 0.2]]})
        )
    with pytest.raises(DataError, match=r"1 label\(s\) but the reward model predicts 2"):
        RewardRegressionTrainer(model, args(tmp_path), eval_dataset=make_data(4, num_labels=1))
    stars = make_data(4).map(lambda row: {"labels": [3.0, 0.5]})  # 1-5 stars, tokenized without `data.validate`
    with pytest.raises(
        DataError, match=r"4 row\(s\) of `train_dataset` have labels outside \[0, 1\], e.g. row 0: \[3.0, 0.5\]"
    ):
        RewardRegressionTrainer(model, args(tmp_path), train_dataset=stars)
    with pytest.raises(ValueError, match="remove_unused_columns"):
        args(tmp_path, remove_unused_columns=True)


# ----------------------------------------------------------------------------------------------- distillation


class TinyLM(torch.nn.Module):
    """A causal LM stand-in: the reward backbone plus an LM head (only `logits` and the output embeddings matter)."""

    def __init__(self, backbone):
        super().__init__()
        self.body = build_reward_model("rad_v", backbone, VOCAB, seed=9).backbone
        self.head = torch.nn.Linear(32, VOCAB, bias=False)

    def get_output_embeddings(self):
        return self.head

    def forward(self, input_ids, attention_mask, position_ids=None):
        from types import SimpleNamespace

        hidden = self.body(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids)
        return SimpleNamespace(logits=self.head(hidden.last_hidden_state))


@pytest.mark.parametrize("top_k", [0, 3])
def test_distillation_loss_matches_slow_formula(top_k, tmp_path):
    teacher = build_reward_model("rad_v", "llama", VOCAB, seed=1)
    student = build_reward_model("rad_q", "llama", VOCAB, seed=2)
    lm = TinyLM("llama").eval()
    data = make_data(4, seed=8, max_len=6)
    config = args(tmp_path, DistillationConfig, candidate_top_k=top_k, candidate_weight=0.5)
    trainer = DistillationTrainer(student, teacher, config, base_model=lm if top_k else None, train_dataset=data)
    batch = RewardDataCollator(pad_token_id=2)([data[i] for i in range(4)])
    student.eval()
    loss = trainer.compute_loss(student, batch)

    observed, cand, n_obs, n_cand = 0.0, 0.0, 0, 0
    for row in data:
        x = row["input_ids"]
        for t in range(1, len(x) + 1):  # student q(x<t, x_t) vs teacher r(x≤t)
            q = student(torch.tensor([[BOS] + x[: t - 1]]), query_ids=torch.tensor([[[x[t - 1]]] * t])).rewards[
                0, -1, :, 0
            ]
            observed += (q - teacher(torch.tensor([x[:t]])).rewards[0, -1]).pow(2).sum()
            n_obs += q.numel()
        for p in range(len(x) + 1) if top_k else []:  # LM top-k after BOS + x≤p
            prefix = torch.tensor([[BOS] + x[:p]])
            top = lm(prefix, torch.ones_like(prefix)).logits[0, -1].topk(top_k).indices
            q = student(prefix, query_ids=top.view(1, 1, -1).expand(1, p + 1, -1)).rewards[0, -1]  # (L, k)
            r = torch.stack([teacher(torch.tensor([x[:p] + [int(v)]])).rewards[0, -1] for v in top], -1)  # (L, k)
            cand += (q - r).pow(2).sum()
            n_cand += q.numel()
    expected = observed / n_obs + (0.5 * cand / n_cand if top_k else 0.0)
    torch.testing.assert_close(loss, expected, rtol=1e-4, atol=1e-6)


def test_distillation_fits_the_teacher(tmp_path):
    teacher = build_reward_model("rad_v", "gpt2", VOCAB, seed=1)
    student = build_reward_model("rad_q", "gpt2", VOCAB, seed=2)
    data = make_data(64, seed=10)
    config = args(tmp_path, DistillationConfig, learning_rate=3e-3, num_train_epochs=20)
    trainer = DistillationTrainer(student, teacher, config, train_dataset=data, eval_dataset=data)
    before = trainer.evaluate()["eval_loss"]
    trainer.train()
    after = trainer.evaluate()["eval_loss"]
    assert after < 0.2 * before, (before, after)


def test_distillation_rejects_mismatched_models(tmp_path):
    teacher = build_reward_model("rad_v", "gpt2", VOCAB)
    with pytest.raises(ValueError, match="RAD-V `teacher_model` into a RAD-Q"):
        DistillationTrainer(build_reward_model("rad_v", "gpt2", VOCAB), teacher, DistillationConfig(str(tmp_path)))
    with pytest.raises(ValueError, match="Vocabulary sizes differ"):
        DistillationTrainer(build_reward_model("rad_q", "gpt2", VOCAB + 1), teacher, DistillationConfig(str(tmp_path)))
    with pytest.raises(ValueError, match="needs `base_model`"):
        DistillationTrainer(
            build_reward_model("rad_q", "gpt2", VOCAB), teacher, DistillationConfig(str(tmp_path), candidate_top_k=5)
        )


def test_per_source_metrics_match_per_text_scores(tokenizer):
    from rad_q_hf.training.scripts import per_source_metrics

    model = build_reward_model("rad_q", "gpt2", len(tokenizer), labels=("y",))
    texts = ["the movie was great", "you idiot", "what a stupid idea", "I love this place, it is lovely"]
    ds = Dataset.from_dict({"text": texts, "labels": [[1.0], [0.0], [0.0], [1.0]], "source": ["a", "b", "a", "a"]})
    metrics = per_source_metrics(model, tokenizer, ds, batch_size=3)
    preds = []
    with torch.no_grad():
        for text in texts:  # one unpadded text at a time: reward of its last token after BOS + the rest
            ids = tokenizer(text, add_special_tokens=False)["input_ids"]
            preds.append(
                float(
                    model(torch.tensor([[BOS] + ids[:-1]]), query_ids=torch.tensor([[[ids[-1]]] * len(ids)])).rewards[
                        0, -1, 0, 0
                    ]
                )
            )
    preds, labels = torch.tensor(preds), torch.tensor([1.0, 0.0, 0.0, 1.0])
    a = torch.tensor([0, 2, 3])
    assert metrics["a"]["n"] == 3 and metrics["all"]["n"] == 4
    assert metrics["a"]["mse"] == pytest.approx(float((preds[a] - labels[a]).pow(2).mean()), rel=1e-4)
    assert metrics["all"]["accuracy"] == pytest.approx(float(((preds >= 0.5) == (labels >= 0.5)).float().mean()))


@pytest.mark.parametrize("lora", [False, True], ids=["full", "lora"])
@pytest.mark.parametrize("kind", ["rad_v", "rad_q"])
def test_head_learning_rate_moves_heads_at_their_own_rate(kind, lora, tmp_path):
    # Adam's first step moves every parameter with a gradient by ±lr exactly (m̂/√v̂ = sign g), so the step sizes
    # read back the learning rate each group got.
    model = build_reward_model(kind, "gpt2", VOCAB)
    config = args(tmp_path, max_steps=1, learning_rate=1e-3, head_learning_rate=1e-5, weight_decay=0.0)
    trainer = RewardRegressionTrainer(
        model, config, train_dataset=make_data(8), peft_config=lora_config(r=4, alpha=8) if lora else None
    )
    before = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    trainer.train()
    steps = {n: (p.detach() - before[n]).abs().max().item() for n, p in model.named_parameters() if n in before}
    heads = {n: s for n, s in steps.items() if n.split(".")[0].endswith("_head")}
    others = {n: s for n, s in steps.items() if n not in heads}
    assert heads and others
    assert all(s == pytest.approx(1e-5, rel=1e-3) for s in heads.values()), heads
    assert max(others.values()) == pytest.approx(1e-3, rel=1e-3), others
    assert sum(len(g["params"]) for g in trainer.optimizer.param_groups) == sum(
        p.requires_grad for p in model.parameters()
    )


def test_head_learning_rate_must_be_positive(tmp_path):
    with pytest.raises(ValueError, match="head_learning_rate"):
        args(tmp_path, head_learning_rate=0.0)


# ------------------------------------------------------------------------------- the regulariser, in train mode


class QueryCapture:
    """Records the `query_ids` of every forward of a model (the prior's random tokens are their last column)."""

    def __init__(self, model):
        self.queries = []
        self.handle = model.register_forward_pre_hook(self, with_kwargs=True)

    def __call__(self, module, args, kwargs):
        self.queries.append(kwargs["query_ids"].detach().clone())


def make_trainer(name: str, tmp_path, weight: float, data):
    """A reward trainer or a distillation trainer (with LM top-k candidates) on a RAD-Q model, prior weight `weight`."""
    student = build_reward_model("rad_q", "llama", VOCAB, seed=2).train()  # train mode: where the prior is on
    if name == "reward":
        return RewardRegressionTrainer(student, args(tmp_path, regularizer_weight=weight), train_dataset=data)
    teacher = build_reward_model("rad_v", "llama", VOCAB, seed=1)
    config = args(tmp_path, DistillationConfig, regularizer_weight=weight, candidate_top_k=3, candidate_weight=0.5)
    return DistillationTrainer(student, teacher, config, base_model=TinyLM("llama").eval(), train_dataset=data)


def slow_prior(model, rows, tokens) -> torch.Tensor:
    """Mean over every text's real positions (BOS + each token) of Σ_j (e_vᵀ W_j h_t)² for its drawn token v, one
    unpadded text at a time: `tokens[i, p]` is the token drawn after BOS + x≤p of text i (right-padded columns)."""
    total, count = 0.0, 0
    for i, x in enumerate(rows):
        ids = torch.tensor([[BOS] + x])  # (1, P)
        hidden = model(ids).last_hidden_state[0]  # (P, d)
        d = hidden.shape[-1]
        W = model.reward_head.weight.view(-1, d, d)  # (L, d, d)
        e = model.token_embeddings[tokens[i, : len(x) + 1]]  # (P, d)
        total = total + torch.einsum("pd,lde,pe->pl", e, W, hidden).pow(2).sum()
        count += len(x) + 1
    return total / count


@pytest.mark.parametrize("name", ["reward", "distillation"])
def test_regulariser_adds_its_weight_times_the_prior_of_uniform_tokens(name, tmp_path):
    data = make_data(6, seed=13)
    batch = RewardDataCollator(pad_token_id=2)([data[i] for i in range(len(data))])
    losses = {}
    for weight in (0.0, 0.5, 2.0):
        trainer = make_trainer(name, tmp_path, weight, data)
        capture = QueryCapture(trainer.model)
        torch.manual_seed(0)
        losses[weight] = trainer.compute_loss(trainer.model, batch)
        capture.handle.remove()
        if weight:
            tokens = capture.queries[-1][..., -1]  # (B, T + 1) the drawn tokens
            with torch.no_grad():
                prior = slow_prior(trainer.model, data["input_ids"], tokens)
            assert prior > 0
            torch.testing.assert_close(losses[weight] - losses[0.0], weight * prior, rtol=1e-4, atol=1e-7)
    with torch.no_grad():  # evaluation reports the loss without the prior
        trainer.model.eval()
        torch.testing.assert_close(trainer.compute_loss(trainer.model, batch), losses[0.0], rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("name", ["reward", "distillation"])
def test_prior_tokens_are_drawn_uniformly_over_the_vocabulary(name, tmp_path):
    data = make_data(8, seed=14)
    batch = RewardDataCollator(pad_token_id=2)([data[i] for i in range(len(data))])
    trainer = make_trainer(name, tmp_path, 1.0, data)
    capture = QueryCapture(trainer.model)
    torch.manual_seed(0)
    with torch.no_grad():
        for _ in range(50):
            trainer.compute_loss(trainer.model, batch)
    drawn = torch.cat([q[..., -1].flatten() for q in capture.queries])  # 50 batches × (B, T + 1)
    assert len(drawn) > 2000
    counts = torch.bincount(drawn, minlength=VOCAB)
    assert len(counts) == VOCAB and (counts > 0).all()  # every token, special ones included, and nothing beyond V
    expected = len(drawn) / VOCAB
    chi2 = float(((counts - expected) ** 2 / expected).sum())
    assert chi2 < 200, chi2  # 119 degrees of freedom: P(χ² > 200) < 1e-5 for uniform draws


@pytest.mark.parametrize("head_learning_rate", [None, 1e-5])
def test_weight_decay_spares_biases_and_norms(head_learning_rate, tmp_path):
    # The Trainer's rule (no decay for biases and normalisation weights) must hold in the head-rate groups too.
    model = build_reward_model("rad_q", "llama", VOCAB)
    config = args(tmp_path, weight_decay=0.1, head_learning_rate=head_learning_rate)
    trainer = RewardRegressionTrainer(model, config, train_dataset=make_data(4))
    optimizer = trainer.create_optimizer()
    decay = set(trainer.get_decay_parameter_names(model))
    names = {id(p): n for n, p in model.named_parameters()}
    seen = {}
    for group in optimizer.param_groups:
        for p in group["params"]:
            seen[names[id(p)]] = group["weight_decay"]
    assert seen.keys() == {n for n, p in model.named_parameters() if p.requires_grad}
    assert {n for n, wd in seen.items() if wd == 0.0} == seen.keys() - decay != set()
    assert all(seen[n] == 0.1 for n in seen.keys() & decay)
