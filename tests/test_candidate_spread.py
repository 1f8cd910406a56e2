"""Per-cut candidate rewards against one forward per (prefix ⊕ candidate), and the spread statistics."""

import pytest
import torch
from conftest import build_reward_model

from rad_q_hf.analysis import candidate_rewards, spread_stats

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
