"""Per-cut candidate rewards against one forward per (prefix ⊕ candidate), and the spread statistics."""

import pytest
import torch
from conftest import build_reward_model

from rad_q_hf.analysis import average_ranks, candidate_rewards, rank_agreement, spread_stats, step_agreement

VOCAB, BOS = 120, 0


def brute_force(model, ids: torch.Tensor, p: int, v: int) -> float:
    """r(x≤p ⊕ v) from one unbatched forward."""
    with torch.no_grad():
        if model.config.model_type == "rad_q":
            prefix = torch.cat([torch.tensor([BOS]), ids[:p]])[None]
            return float(model(prefix, query_ids=torch.tensor([[[v]] * prefix.shape[1]])).rewards[0, -1, 0, 0])
        return float(model(input_ids=torch.cat([ids[:p], torch.tensor([v])])[None]).rewards[0, -1, 0])


@pytest.mark.parametrize("kind", ["rad_v", "rad_q"])
def test_candidate_rewards_match_one_forward_per_candidate(kind):
    model = build_reward_model(kind, "gpt2", VOCAB)
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(3, VOCAB, (5,), generator=g)
    candidates = torch.randint(3, VOCAB, (6, 3), generator=g)  # a different candidate set at every cut
    out = candidate_rewards(model, ids, candidates)
    assert out.shape == (6, 3)
    for p in range(6):
        for j in range(3):
            assert float(out[p, j]) == pytest.approx(brute_force(model, ids, p, int(candidates[p, j])), abs=1e-5)


def test_spread_stats_by_hand():
    r = torch.tensor([[0.0, 0.5, 1.0], [0.2, 0.2, 0.2]])
    s = spread_stats(r)
    assert s["steps"] == 2 and s["mean_range"] == pytest.approx(0.5)
    assert s["mean_std"] == pytest.approx(((1 / 6) ** 0.5) / 2)  # std of (0, .5, 1) is √(1/6); of a constant 0
    assert s["mean_reward"] == pytest.approx(2.1 / 6)


def spearman_by_hand(x: list[float], y: list[float]) -> float:
    """Spearman's ρ from sorted positions, ties averaged: the textbook definition, one step at a time."""

    def ranks(v):
        order = sorted(range(len(v)), key=lambda i: v[i])
        out = [0.0] * len(v)
        i = 0
        while i < len(v):
            j = i
            while j + 1 < len(v) and v[order[j + 1]] == v[order[i]]:
                j += 1
            for m in range(i, j + 1):
                out[order[m]] = (i + j) / 2 + 1  # positions i..j share their mean rank (1-based)
            i = j + 1
        return out

    rx, ry = ranks(x), ranks(y)
    mx, my = sum(rx) / len(rx), sum(ry) / len(ry)
    cov = sum((a - mx) * (b - my) for a, b in zip(rx, ry, strict=True))
    return cov / (sum((a - mx) ** 2 for a in rx) * sum((b - my) ** 2 for b in ry)) ** 0.5


def test_rank_agreement_against_the_textbook_definition():
    g = torch.Generator().manual_seed(0)
    a = torch.rand(30, 7, generator=g)
    b = a + 0.3 * torch.rand(30, 7, generator=g)
    a[:5] = a[:5].round(decimals=1).clamp(0.2, 0.8)  # ties, as clamping to [0, 1] makes
    b[3] = 0.5  # a constant row: no order, left out and counted
    out = rank_agreement(a, b)
    kept = [i for i in range(30) if i != 3]
    expected = sum(spearman_by_hand(a[i].tolist(), b[i].tolist()) for i in kept) / len(kept)
    top = sum(int(a[i].argmax() == b[i].argmax()) for i in kept) / len(kept)  # no tied maxima in these rows
    assert out["steps"] == 29 and out["steps_constant"] == 1
    assert out["mean_spearman"] == pytest.approx(expected, abs=1e-9)
    assert out["top1_agreement"] == pytest.approx(top)
    assert 0.2 < out["mean_spearman"] < 1  # related but not identical orders


def test_rank_agreement_extremes_and_shape_check():
    a = torch.tensor([[0.1, 0.2, 0.3, 0.4]])
    assert rank_agreement(a, 2 * a + 1)["mean_spearman"] == pytest.approx(1.0)  # order, not scale
    assert rank_agreement(a, -a)["mean_spearman"] == pytest.approx(-1.0)
    assert rank_agreement(a, -a)["top1_agreement"] == 0.0
    with pytest.raises(ValueError, match="one shape"):
        rank_agreement(a, a[:, :3])


def test_top1_agreement_breaks_ties_at_random():
    # a: candidates 0 and 1 tie for best; b: 1 alone. A random pick among a's best matches b half the time.
    a = torch.tensor([[0.9, 0.9, 0.1, 0.2], [0.0, 0.0, 0.0, 0.5]])
    b = torch.tensor([[0.2, 0.8, 0.1, 0.3], [0.3, 0.3, 0.3, 0.1]])  # row 2: b's three tied best all miss a's
    rho, top = step_agreement(a, b)
    assert top.tolist() == [0.5, 0.0]
    assert rank_agreement(a, b)["top1_agreement"] == pytest.approx(0.25)


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_agreement_refuses_non_finite_scores(bad):
    a = torch.tensor([[0.1, 0.2, 0.3], [0.3, 0.2, 0.1]])
    b = a.clone()
    b[1, 0] = bad
    with pytest.raises(ValueError, match="non-finite"):
        rank_agreement(a, b)


def test_average_ranks_by_hand():
    ranks = average_ranks(torch.tensor([[0.3, 0.1, 0.3, 0.2], [1.0, 1.0, 1.0, 1.0]]))
    assert ranks.tolist() == [[3.5, 1.0, 3.5, 2.0], [2.5, 2.5, 2.5, 2.5]]  # ties share the mean of their places
