"""`rad_q_hf.scoring`: rewards of prefixes, texts and candidates, the same on either padding side."""

import pytest
import torch
from conftest import build_reward_model
from test_training import VOCAB, TinyLM, args, make_data

from rad_q_hf.data import RewardDataCollator
from rad_q_hf.scoring import candidate_values, last_token, prefix_rewards, score_texts, text_rewards
from rad_q_hf.training import DistillationConfig, DistillationTrainer, RewardRegressionTrainer

PAD = 2


def padded(rows: list[list[int]], side: str) -> tuple[torch.Tensor, torch.Tensor]:
    """`rows` padded with PAD on `side`: ids and mask (B, T)."""
    T = max(map(len, rows))
    ids = torch.full((len(rows), T), PAD)
    mask = torch.zeros(len(rows), T, dtype=torch.long)
    for i, row in enumerate(rows):
        span = slice(T - len(row), T) if side == "left" else slice(0, len(row))
        ids[i, span], mask[i, span] = torch.tensor(row), 1
    return ids, mask


def real(values: torch.Tensor, mask: torch.Tensor) -> list[torch.Tensor]:
    """Each row's entries at its real positions (drops the padding wherever it is)."""
    return [values[i, mask[i].bool()] for i in range(len(values))]


def test_prefix_rewards_are_padding_side_agnostic(kind, backbone):
    model = build_reward_model(kind, backbone, VOCAB)
    rows = make_data(5, seed=11)["input_ids"]
    results = {}
    for side in ("left", "right"):
        ids, mask = padded(rows, side)
        with torch.no_grad():
            rewards, _ = prefix_rewards(model, ids, mask)  # (B, T, L)
        results[side] = (real(rewards, mask), last_token(rewards, mask))
    for a, b in zip(results["left"][0], results["right"][0], strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(results["left"][1], results["right"][1], rtol=1e-5, atol=1e-6)
    # ... and equal to one unpadded text at a time
    for row, per_prefix in zip(rows, results["left"][0], strict=True):
        with torch.no_grad():
            alone, _ = prefix_rewards(model, torch.tensor([row]), torch.ones(1, len(row), dtype=torch.long))
        torch.testing.assert_close(per_prefix, alone[0], rtol=1e-5, atol=1e-6)


def test_last_token_reads_the_rightmost_real_token():
    rewards = torch.arange(2 * 4 * 1, dtype=torch.float).view(2, 4, 1)  # (B, T, L): reward = position
    mask = torch.tensor([[0, 1, 1, 0], [1, 1, 1, 1]])  # padding on both sides
    assert last_token(rewards, mask)[:, 0].tolist() == [2.0, 7.0]


def test_trainer_loss_is_padding_side_agnostic(kind, tmp_path):
    # No prior here: it draws one random token per column, and columns hold different prefixes on the two sides.
    model = build_reward_model(kind, "llama", VOCAB).train()
    data = make_data(6, seed=12)
    trainer = RewardRegressionTrainer(model, args(tmp_path), train_dataset=data)
    right = RewardDataCollator(pad_token_id=PAD)([data[i] for i in range(len(data))])  # what the trainer feeds
    ids, mask = padded(data["input_ids"], "left")
    left = {"input_ids": ids, "attention_mask": mask, "labels": right["labels"]}
    torch.testing.assert_close(trainer.compute_loss(model, left), trainer.compute_loss(model, right))
    _, left_preds, _ = trainer.prediction_step(model, left, prediction_loss_only=False)
    _, right_preds, _ = trainer.prediction_step(model, right, prediction_loss_only=False)
    torch.testing.assert_close(left_preds, right_preds)  # eval_mse / eval_accuracy read the last real token


@pytest.mark.parametrize("top_k", [0, 3])
def test_distillation_loss_is_padding_side_agnostic(top_k, tmp_path):
    teacher = build_reward_model("rad_v", "llama", VOCAB, seed=1)
    student = build_reward_model("rad_q", "llama", VOCAB, seed=2).eval()
    data = make_data(4, seed=8, max_len=6)
    config = args(tmp_path, DistillationConfig, candidate_top_k=top_k, candidate_weight=0.5)
    lm = TinyLM("llama").eval() if top_k else None
    trainer = DistillationTrainer(student, teacher, config, base_model=lm, train_dataset=data)
    losses = [
        trainer.compute_loss(
            student, dict(zip(("input_ids", "attention_mask"), padded(data["input_ids"], s), strict=True))
        )
        for s in ("left", "right")
    ]
    torch.testing.assert_close(losses[0], losses[1], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("side", ["left", "right"])
def test_candidate_values_match_brute_force(backbone, side):
    teacher = build_reward_model("rad_v", backbone, VOCAB)
    rows = make_data(3, seed=7, max_len=6)["input_ids"]
    ids, mask = padded(rows, side)
    B, T = ids.shape
    candidates = torch.randint(3, VOCAB, (B, T + 1, 4))
    fast = candidate_values(teacher, ids, mask, candidates)  # (B, T + 1, k, L)
    for b, x in enumerate(rows):
        # column p of a left-padded row follows the real tokens among its first p columns
        n_real = torch.cat([torch.zeros(1, dtype=torch.long), mask[b].cumsum(0)]).tolist()
        for p in range(T + 1):
            if side == "right" and p > len(x):
                continue
            for j in range(4):
                seq = torch.tensor([x[: n_real[p]] + [int(candidates[b, p, j])]])
                with torch.no_grad():
                    expected = teacher(seq).rewards[0, -1]
                torch.testing.assert_close(fast[b, p, j], expected, rtol=1e-4, atol=1e-5)


def test_score_texts_equal_one_text_at_a_time(kind, tokenizer):
    model = build_reward_model(kind, "gpt2", len(tokenizer), labels=("y", "z"))
    texts = ["the movie was great", "you idiot", "what a stupid idea", "I love this place, it is lovely"]
    one_by_one = torch.cat([text_rewards(model, tokenizer, [t]) for t in texts])  # (N, L), no padding at all
    for side in ("left", "right"):
        tokenizer.padding_side = side
        try:
            torch.testing.assert_close(text_rewards(model, tokenizer, texts, batch_size=3), one_by_one)
            scores = score_texts(model, tokenizer, texts, label=1)
        finally:
            tokenizer.padding_side = "left"
        assert scores == pytest.approx(one_by_one[:, 1].clamp(0, 1).tolist(), abs=1e-6)
    assert text_rewards(model, tokenizer, []).shape == (0, 2)  # nothing to score: an empty (0, n_labels)
    # An empty text has no reward (NaN, skipped by the metrics), alone in a batch or padded beside others.
    for batch_size in (1, 2, 5):
        mixed = text_rewards(model, tokenizer, ["", texts[0], "", texts[1]], batch_size=batch_size)
        assert mixed[[0, 2]].isnan().all() and not mixed[[1, 3]].isnan().any()
        torch.testing.assert_close(mixed[[1, 3]], one_by_one[:2])
