"""How much rank does a reward model's matrix over (prefixes × next tokens) use?

`R[i, j] = r(prefix_i ⊕ v_j)`. RAD-Q's is `H Wᵀ Eᵀ + (H b) 1ᵀ`, of rank ≤ d + 1 by construction; RAD-V could in
principle represent any matrix. `reward_matrix` builds R for every cut of some texts (the prefixes) and a token set,
and `spectrum_stats` measures its singular values: numerical rank and the ranks holding 90 / 99 / 99.9 % of the
energy (Σσ²), optionally after centring each row (which removes a per-prefix baseline).
"""

import torch

from .training.distillation_trainer import teacher_candidate_values
from .training.reward_trainer import is_rad_q, with_bos

ENERGY_LEVELS = (0.9, 0.99, 0.999)


@torch.no_grad()
def reward_matrix(
    model, texts: list[list[int]], tokens: torch.Tensor, label: int = 0, chunk_size: int = 64
) -> torch.Tensor:
    """R of shape (Σ_i (len_i + 1), n): row = a cut x≤p (p = 0..len) of a text, column = a token of `tokens` (n,).

    RAD-Q: one forward of `BOS + text` per text gives the hidden state of every cut; the tokens are scored by
    gathering their rows of E. RAD-V: each cut ⊕ token is scored by the value head, `chunk_size` tokens at a time
    in one forward per text (every candidate attends to its own prefix through a 4D mask).
    """
    device = next(model.parameters()).device
    tokens = tokens.to(device)
    rows = []
    for text in texts:
        ids = torch.tensor([text], device=device)  # (1, T)
        mask = torch.ones_like(ids)
        if is_rad_q(model):
            bos_ids, bos_mask = with_bos(model, ids, mask)
            hidden, _ = model.encode(bos_ids, bos_mask, use_cache=False)  # (1, T + 1, d): cut p at position p
            scores = model.score_hidden(hidden[0], query_ids=tokens.expand(hidden.shape[1], -1), label=label)
            rows.append(scores)  # (T + 1, n)
        else:
            T = ids.shape[1]
            parts = []
            for chunk in tokens.split(chunk_size):
                cand = chunk.expand(1, T + 1, -1)  # (1, T + 1, c): every cut gets the same candidates
                parts.append(teacher_candidate_values(model, ids, mask, cand)[0, :, :, label])  # (T + 1, c)
            rows.append(torch.cat(parts, dim=1))
    return torch.cat(rows)


def numerical_rank(sigma: torch.Tensor, shape: tuple[int, int], rtol: float | None = None, dtype=None) -> int:
    """Singular values above `rtol · σ_max` (default `max(m, n) · eps` of `dtype`, numpy's `matrix_rank` rule)."""
    if sigma.numel() == 0 or sigma[0] == 0:
        return 0
    rtol = rtol if rtol is not None else max(shape) * torch.finfo(dtype or sigma.dtype).eps
    return int((sigma > rtol * sigma[0]).sum())


def spectrum_stats(R: torch.Tensor, center: bool = False, rtol: float | None = None) -> dict:
    """Singular values (descending), numerical rank and energy ranks of R.

    The SVD runs in float64; the rank tolerance follows the precision R was computed in (a float32 reward matrix
    carries float32 rounding noise).
    """
    dtype = R.dtype if R.dtype.is_floating_point else torch.float64
    R = R.double()
    if center:
        R = R - R.mean(dim=1, keepdim=True)  # remove each prefix's mean reward (RAD-Q's baseline term)
    sigma = torch.linalg.svdvals(R)
    energy = sigma.pow(2).cumsum(0) / sigma.pow(2).sum().clamp(min=1e-300)
    stats = {
        "shape": list(R.shape),
        "centered": center,
        "numerical_rank": numerical_rank(sigma, tuple(R.shape), rtol, dtype),
        "singular_values": sigma.tolist(),
    }
    for level in ENERGY_LEVELS:
        stats[f"rank_{level * 100:g}"] = int((energy < level).sum()) + 1
    return stats


def plot_spectra(spectra: dict[str, list[float]], path: str, bounds: dict[str, int] | None = None) -> None:
    """Normalised singular values (σ_i / σ_1, log scale) of several models on one plot, with optional rank bounds."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for name, sigma in spectra.items():
        s = torch.tensor(sigma)
        ax.semilogy(range(1, len(s) + 1), (s / s[0]).clamp(min=1e-17), label=name)
    for name, bound in (bounds or {}).items():
        ax.axvline(bound, linestyle="--", color="gray")
        ax.annotate(name, (bound, 1e-3), rotation=90, va="bottom", ha="right", fontsize=8)
    ax.set_xlabel("index i")
    ax.set_ylabel("σ_i / σ_1")
    ax.set_title("Reward-matrix spectra")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


__all__ = ["ENERGY_LEVELS", "numerical_rank", "plot_spectra", "reward_matrix", "spectrum_stats"]
