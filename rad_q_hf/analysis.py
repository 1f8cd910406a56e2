"""How much rank does a reward model's matrix over (prefixes × next tokens) use?

`R[i, j] = r(prefix_i ⊕ v_j)`. RAD-Q's is `H Wᵀ Eᵀ + (H b) 1ᵀ`, of rank ≤ d + 1 by construction; RAD-V could in
principle represent any matrix. `reward_matrix` builds R for every cut of some texts (the prefixes) and a token set,
and `spectrum_stats` measures its singular values: numerical rank and the ranks holding 90 / 99 / 99.9 % of the
energy (Σσ²), optionally after centring each row (which removes a per-prefix baseline).

`rank_reward_models(RankConfig(...))` is the whole `rad-q rank` pipeline: sample prefixes from an LM, pick the
token set, build and measure every model's R, and write `results.json`, `spectra.png` and `matrices.safetensors`.
"""

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from .scoring import candidate_values, is_rad_q, with_bos

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
                parts.append(candidate_values(model, ids, mask, cand)[0, :, :, label])  # (T + 1, c)
            rows.append(torch.cat(parts, dim=1))
    return torch.cat(rows)


@torch.no_grad()
def candidate_rewards(model, ids: torch.Tensor, candidates: torch.Tensor, label: int = 0) -> torch.Tensor:
    """Rewards r(x≤p ⊕ v) of each cut's own candidates: ids (T,), candidates (T + 1, k) → (T + 1, k), unclamped.

    Row p scores `candidates[p]` after the first p tokens (p = 0: the empty prefix), as decoding would.
    """
    device = next(model.parameters()).device
    ids, candidates = ids.to(device)[None], candidates.to(device)
    mask = torch.ones_like(ids)
    if is_rad_q(model):
        bos_ids, bos_mask = with_bos(model, ids, mask)
        hidden, _ = model.encode(bos_ids, bos_mask, use_cache=False)  # (1, T + 1, d)
        return model.score_hidden(hidden[0], query_ids=candidates, label=label)
    return candidate_values(model, ids, mask, candidates[None])[0, :, :, label]


def spread_stats(rewards: torch.Tensor) -> dict[str, float]:
    """Spread of rewards across each step's candidates, rewards (steps, k): the mean over steps of the std and of
    max − min over the k candidates, and the mean reward."""
    rewards = rewards.double()
    return {
        "steps": rewards.shape[0],
        "mean_std": float(rewards.std(dim=1, unbiased=False).mean()),
        "mean_range": float((rewards.max(dim=1).values - rewards.min(dim=1).values).mean()),
        "mean_reward": float(rewards.mean()),
    }


def average_ranks(x: torch.Tensor) -> torch.Tensor:
    """Ranks (1..k) of each row's finite entries, ties given their average rank: (steps, k) → (steps, k) float64."""
    below = (x[:, :, None] > x[:, None, :]).sum(-1).double()  # (steps, k): entries smaller than each
    ties = (x[:, :, None] == x[:, None, :]).sum(-1).double()  # (steps, k): itself included
    return below + (ties + 1) / 2


def step_agreement(a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per step, how alike two scorers order the same k candidates, a and b (steps, k) → two (steps,) float64 tensors.

    Spearman's ρ (Pearson on average ranks), and the chance that both pick the same first candidate when each breaks
    ties among its best at random (|A ∩ B| / (|A|·|B|) for the sets A, B of maximal candidates; 1/k for unrelated
    scorers without ties). Steps where either scorer gives all k candidates one score have no order: NaN in both.
    Non-finite scores are refused (a NaN would rank below everything and count as the maximum).
    """
    if a.shape != b.shape or a.dim() != 2 or a.shape[1] < 2:
        raise ValueError(
            f"Agreement needs two (steps, k ≥ 2) tensors of one shape, got {tuple(a.shape)} and {tuple(b.shape)}."
        )
    if not (torch.isfinite(a).all() and torch.isfinite(b).all()):
        raise ValueError(
            "Agreement of non-finite scores is undefined: drop or fix the steps whose scores are NaN/inf."
        )
    ra, rb = average_ranks(a), average_ranks(b)  # (steps, k)
    ra, rb = ra - ra.mean(1, keepdim=True), rb - rb.mean(1, keepdim=True)
    na, nb = ra.norm(dim=1), rb.norm(dim=1)  # (steps,): 0 where a row's scores are all equal
    varies = (na > 0) & (nb > 0)
    rho = (ra * rb).sum(1) / (na * nb).clamp_min(1e-300)
    best_a, best_b = a == a.amax(1, keepdim=True), b == b.amax(1, keepdim=True)  # (steps, k)
    top = (best_a & best_b).sum(1).double() / (best_a.sum(1) * best_b.sum(1)).double()
    nan = torch.tensor(float("nan"), dtype=torch.float64)
    return torch.where(varies, rho, nan), torch.where(varies, top, nan)


def rank_agreement(a: torch.Tensor, b: torch.Tensor) -> dict[str, float]:
    """`step_agreement` of a and b (steps, k) summarised: the means over the steps where both vary, their count, and
    the count of steps left out (`steps_constant`).

    RAD adds β·r across one step's candidates, so two scorers with equal spread but low ρ push toward different
    tokens; ρ against a judge of the text says how far a model's order follows the judge's, one step at a time.
    """
    rho, top = step_agreement(a, b)
    kept = ~rho.isnan()
    n = int(kept.sum())
    return {
        "steps": n,
        "steps_constant": int((~kept).sum()),
        "mean_spearman": float(rho[kept].mean()) if n else float("nan"),
        "top1_agreement": float(top[kept].mean()) if n else float("nan"),
    }


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


DEFAULT_PROMPTS = [
    "The new neighbours moved in last week and",
    "I asked the waiter for the bill, but he",
    "Honestly, the worst part of the movie was",
    "My brother told me that his teacher",
    "The city council voted on Tuesday to",
    "She looked at the old photograph and",
    "People who post comments like that are",
    "After the game, the fans started to",
]


@dataclass
class RankConfig:
    """One `rad-q rank` run: the reward models to compare on the same prefixes and tokens (the command's flags)."""

    reward_models: list[str] = field(
        default_factory=list,
        metadata={"aliases": ["--reward-model", "--reward_model"], "action": "append",
                  "help": "A shipped name, folder or Hub id; repeat to compare several on one plot."},
    )  # fmt: skip
    num_prefixes: int = field(default=200, metadata={"help": "Rows: cuts of prompts + sampled continuations."})
    tokens: str = field(
        default="topk",
        metadata={"choices": ["topk", "vocab"],
                  "help": "Columns: the union of the LM's top-k at every prefix, or (a sample of) the vocabulary."},
    )  # fmt: skip
    top_k: int = field(default=20, metadata={"help": "k for --tokens topk."})
    vocab_size: int | None = field(default=None, metadata={"help": "--tokens vocab: a seeded sample of N tokens."})
    prompts_file: str | None = field(
        default=None, metadata={"help": "JSONL with `text` or `prompt.text` (default: built-in)."}
    )
    continuation_tokens: int = field(default=20, metadata={"help": "Sampled tokens after each prompt."})
    lm: str = field(default="smollm2-135m", metadata={"help": "Causal LM for continuations and top-k."})
    center: bool = field(default=False, metadata={"help": "Centre each row before the SVD."})
    seed: int = field(default=0, metadata={"help": "Seed of the continuations and the vocabulary sample."})
    output: str = field(default="outputs/rank", metadata={"help": "Folder for results.json and spectra.png."})

    def __post_init__(self):
        flat = []
        for item in [self.reward_models] if isinstance(self.reward_models, str) else self.reward_models:
            flat += [item] if isinstance(item, str) else list(item)  # `action="append"` gives a list per flag
        self.reward_models = flat
        if not self.reward_models:
            raise ValueError("Give at least one --reward-model.")
        if self.num_prefixes < 1 or self.top_k < 1 or self.continuation_tokens < 0:
            raise ValueError("--num-prefixes and --top-k must be ≥ 1, --continuation-tokens ≥ 0.")


def sample_prefix_texts(lm, tokenizer, prompts: list[str], config: RankConfig) -> list[list[int]]:
    """Token ids of prompts + sampled continuations, cut so that their cuts (len + 1 each) give `num_prefixes` rows."""
    torch.manual_seed(config.seed)
    texts, n_rows = [], 0
    for prompt in prompts * (1 + config.num_prefixes // max(1, len(prompts))):  # sampled continuations differ
        ids = tokenizer(prompt, return_tensors="pt")["input_ids"]
        if config.continuation_tokens:
            ids = lm.generate(ids, do_sample=True, top_k=config.top_k, max_new_tokens=config.continuation_tokens,
                              pad_token_id=tokenizer.pad_token_id)  # fmt: skip
        text = ids[0].tolist()[: config.num_prefixes - n_rows - 1]
        texts.append(text)
        n_rows += len(text) + 1
        if n_rows >= config.num_prefixes:
            break
    return texts


@torch.no_grad()
def token_columns(lm, tokenizer, texts: list[list[int]], config: RankConfig) -> torch.Tensor:
    """The columns of R: the union of the LM's top-k after every prefix, or (a seeded sample of) the vocabulary."""
    if config.tokens == "topk":
        bos = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
        tops = [lm(torch.tensor([[bos] + t])).logits[0].topk(config.top_k, -1).indices.flatten() for t in texts]
        return torch.cat(tops).unique()
    tokens = torch.arange(len(tokenizer))
    if config.vocab_size:
        tokens = tokens[torch.randperm(len(tokens), generator=torch.Generator().manual_seed(config.seed))]
        tokens = tokens[: config.vocab_size].sort().values
    return tokens


def model_stats(model, texts: list[list[int]], tokens: torch.Tensor, center: bool) -> tuple[dict, torch.Tensor]:
    """One model's spectrum statistics over the distinct cuts of `texts` (and, uncentred, the row-centred ones)."""
    cuts = [tuple(text[:p]) for text in texts for p in range(len(text) + 1)]  # the rows of R, in order
    first = {cut: i for i, cut in reversed(list(enumerate(cuts)))}
    distinct = torch.tensor(sorted(first.values()))
    R = reward_matrix(model, texts, tokens)[distinct]  # repeated prompts give repeated prefixes: keep one row each
    stats = spectrum_stats(R, center=center)
    stats["model_type"], stats["d_plus_1"] = model.config.model_type, model.config.hidden_size + 1
    stats["prefix_rows_before_dedup"] = len(cuts)
    if not center:  # the row-centred spectrum too: it removes the per-prefix baseline (RAD-Q's bᵀh_t)
        stats["row_centered"] = spectrum_stats(R, center=True)
    return stats, R


def summary_line(name: str, stats: dict) -> str:
    line = f"{name}: R {stats['shape'][0]}×{stats['shape'][1]}, numerical rank {stats['numerical_rank']}, "
    line += f"90/99/99.9 % energy at rank {stats['rank_90']}/{stats['rank_99']}/{stats['rank_99.9']}"
    if "row_centered" in stats:
        c = stats["row_centered"]
        line += f"; row-centred: rank {c['numerical_rank']}, energy {c['rank_90']}/{c['rank_99']}/{c['rank_99.9']}"
    return f"{line} (d + 1 = {stats['d_plus_1']})"


def rank_reward_models(config: RankConfig, on_model=None) -> dict[str, dict]:
    """The `rad-q rank` pipeline; returns each model's statistics and writes them, the plot and the matrices to
    `config.output`. `on_model(name, stats)` is called as each model is done (the CLI prints a line)."""
    from safetensors.torch import save_file
    from transformers import AutoModel, AutoModelForCausalLM, AutoTokenizer

    from .checkpoints import lm_path, load_checkpoint, reward_model_path
    from .evaluation.prompts import load_prompts

    prompts = load_prompts(config.prompts_file) if config.prompts_file else DEFAULT_PROMPTS
    path = lm_path(config.lm)
    tokenizer = AutoTokenizer.from_pretrained(path)
    lm = load_checkpoint(AutoModelForCausalLM.from_pretrained, path, config.lm).eval()
    texts = sample_prefix_texts(lm, tokenizer, prompts, config)
    tokens = token_columns(lm, tokenizer, texts, config)
    results, spectra, bounds, matrices = {}, {}, {}, {}
    for name in config.reward_models:
        model = load_checkpoint(AutoModel.from_pretrained, reward_model_path(name), name).eval()
        if model.config.vocab_size != lm.config.vocab_size:
            raise ValueError(f"{name} has vocabulary size {model.config.vocab_size}, the LM {lm.config.vocab_size}.")
        stats, R = model_stats(model, texts, tokens, config.center)
        results[name], spectra[name], matrices[name] = stats, stats["singular_values"], R.float().contiguous()
        if model.config.model_type == "rad_q":
            bounds[f"d + 1 = {stats['d_plus_1']}"] = stats["d_plus_1"]
        if on_model is not None:
            on_model(name, stats)
    out = Path(config.output)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps({"args": asdict(config), "results": results}, indent=2) + "\n")
    plot_spectra(spectra, str(out / "spectra.png"), bounds)
    save_file({**matrices, "tokens": tokens.contiguous()}, out / "matrices.safetensors")
    return results


__all__ = [
    "DEFAULT_PROMPTS",
    "ENERGY_LEVELS",
    "RankConfig",
    "average_ranks",
    "candidate_rewards",
    "numerical_rank",
    "plot_spectra",
    "rank_agreement",
    "rank_reward_models",
    "reward_matrix",
    "spectrum_stats",
    "spread_stats",
    "step_agreement",
]
