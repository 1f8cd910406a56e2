"""Spread of rewards across one decoding step's top-k candidates: the quantity β multiplies.

    python benchmarks/candidate_spread.py                                   # 20 prompts per task, k = 20
    python benchmarks/candidate_spread.py --num_prompts 50 --models rad-q-toxicity,rad-v-toxicity

The embedded SmolLM2-135M samples continuations (unguided top-k sampling, T = 1, seeded) of each task's shipped
prompts (toxicity: `rtp-nontoxic`, sentiment: `sentiment-neutral`). At every generated step the LM's top-k next tokens
are scored by each shipped reward model of the task (RAD-V: prefix ⊕ candidate; RAD-Q: one forward per text) and
clamped to [0, 1] as the decoding processors do. Reported, per model: the mean over steps of the std and of max − min
of the k rewards, and the mean std of the LM's own top-k logits for scale: RAD adds β·r to those logits, so a
candidate's reward moves its logit by at most β·(max − min) relative to another's.
Models of the same task score the same steps' candidates, so each pair's agreement is reported too, and each
model's agreement with the evaluation's judge of the text with the candidate appended (profanity-check's toxicity
probability of the continuation; VADER's compound score of prompt + continuation): the mean per-step Spearman ρ of
the k scores and the chance both pick the same first candidate (`step_agreement`), with standard errors clustered by
prompt, and for each pair of models the paired difference of their ρ with the judge.
Writes `spread.json` and `spread.md` to --output_dir.
"""

import json
from dataclasses import dataclass, field
from itertools import combinations
from pathlib import Path

import torch
from transformers import AutoModel, AutoModelForCausalLM, AutoTokenizer, HfArgumentParser

import rad_q_hf
from rad_q_hf.analysis import candidate_rewards, spread_stats, step_agreement
from rad_q_hf.embedded import resolve
from rad_q_hf.evaluation.judges import sentiment_judge, toxicity_judge
from rad_q_hf.evaluation.prompts import load_prompts

PROMPTS = {"toxicity": "rtp-nontoxic", "sentiment": "sentiment-neutral"}
JUDGES = {"toxicity": "profanity-check", "sentiment": "vader"}  # the evaluation's default judges


@dataclass
class SpreadArguments:
    models: str = field(
        default="rad-q-toxicity,rad-v-toxicity,rad-q-sentiment,rad-v-sentiment",
        metadata={"help": "Comma-separated shipped models (or delta folders ending in -toxicity / -sentiment)."},
    )
    num_prompts: int = field(default=20, metadata={"help": "Prompts per task."})
    top_k: int = field(default=20, metadata={"help": "Candidates per step (k)."})
    max_new_tokens: int = field(default=20, metadata={"help": "Decoding steps per prompt."})
    batch_size: int = field(default=10, metadata={"help": "Prompts per generate call."})
    seed: int = field(default=0, metadata={"help": "Sampling seed."})
    output_dir: str = field(default="benchmarks/results/candidate_spread", metadata={"help": "Where results go."})


@torch.no_grad()
def sample_steps(lm, tokenizer, prompts: list[str], a: SpreadArguments) -> list[tuple[torch.Tensor, int]]:
    """(ids of prompt + continuation, prompt length) per prompt, from unguided top-k sampling."""
    torch.manual_seed(a.seed)
    rows = []
    for start in range(0, len(prompts), a.batch_size):
        batch = tokenizer(prompts[start : start + a.batch_size], return_tensors="pt", padding=True)
        out = lm.generate(**batch, do_sample=True, top_k=a.top_k, max_new_tokens=a.max_new_tokens,
                          pad_token_id=tokenizer.pad_token_id)  # fmt: skip
        width = batch["input_ids"].shape[1]
        for mask, seq in zip(batch["attention_mask"], out, strict=True):
            new = seq[width:]
            ended = (new == tokenizer.eos_token_id).nonzero()
            new = new[: int(ended[0]) if len(ended) else len(new)]
            prompt = seq[:width][mask.bool()]
            rows.append((torch.cat([prompt, new]), len(prompt)))
    return rows


@torch.no_grad()
def step_candidates(lm, ids: torch.Tensor, prompt_len: int, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The LM's top-k after each cut p = 0..T (rows before `prompt_len` unused), (T + 1, k), and their logits."""
    logits = lm(ids[None]).logits[0].float()  # (T, V): row p - 1 predicts the token after the first p tokens
    top = logits.topk(k, dim=-1)
    candidates = torch.cat([top.indices[:1], top.indices])  # row 0 (empty prefix) is never used
    values = torch.cat([top.values[:1], top.values])
    return candidates, values


def measure(name: str, rows, candidates) -> tuple[dict, torch.Tensor]:
    """`spread_stats` of the clamped candidate rewards of model `name` over every generated step of `rows`
    (`candidates`: `step_candidates` of each row), and those rewards, (steps, k)."""
    model = AutoModel.from_pretrained(rad_q_hf.default_checkpoint(name)).eval()
    rewards, logit_std = [], []
    for (ids, prompt_len), (cand, values) in zip(rows, candidates, strict=True):
        steps = slice(prompt_len, len(ids))  # cut p: the step that chose token p
        rewards.append(candidate_rewards(model, ids, cand)[steps].clamp(0, 1))
        logit_std.append(values[steps].std(dim=1, unbiased=False))
    stats = spread_stats(torch.cat(rewards))
    stats["lm_logit_std"] = float(torch.cat(logit_std).mean())
    return stats, torch.cat(rewards)


def judge_scores(task: str, tokenizer, rows, candidates) -> torch.Tensor:
    """The evaluation judge's score of each step's text with each candidate appended, (steps, k), on the text the
    evaluation judges: the continuation so far for toxicity (profanity-check's probability), prompt + continuation
    for sentiment (VADER's compound score). Both rise with the reward model's label."""
    texts = [
        tokenizer.decode(
            torch.cat([ids[prompt_len if task == "toxicity" else 0 : p], v[None]]), skip_special_tokens=True
        )
        for (ids, prompt_len), (cand, _) in zip(rows, candidates, strict=True)
        for p in range(prompt_len, len(ids))
        for v in cand[p]
    ]
    if task == "toxicity":
        score = toxicity_judge(JUDGES[task]).score
    else:
        score = sentiment_judge(JUDGES[task]).compound  # VADER's number before its thresholds
    k = candidates[0][0].shape[1]
    return torch.tensor(score(texts), dtype=torch.float64).view(-1, k)


def clustered_mean(values: torch.Tensor, groups: torch.Tensor) -> tuple[float, float]:
    """Mean of the finite `values` (steps,) and its standard error clustered by `groups` (steps,): the steps of one
    prompt's continuation are not independent, so the SE sums each prompt's deviations before squaring."""
    kept = values.isfinite()
    x, g = values[kept].double(), groups[kept]
    if len(x) == 0:
        return float("nan"), float("nan")
    deviation = torch.zeros(int(g.max()) + 1, dtype=torch.float64).index_add_(0, g, x - x.mean())
    return float(x.mean()), float(deviation.square().sum().sqrt() / len(x))


def agreement_of(rho: torch.Tensor, top: torch.Tensor, groups: torch.Tensor) -> dict:
    """`rank_agreement`'s summary of one pair's `step_agreement` (steps,) values, with the standard errors of its two
    means clustered by prompt."""
    (mean_rho, rho_se), (mean_top, top_se) = clustered_mean(rho, groups), clustered_mean(top, groups)
    n = int(rho.isfinite().sum())
    return {"steps": n, "steps_constant": len(rho) - n, "mean_spearman": mean_rho, "top1_agreement": mean_top,
            "spearman_se": rho_se, "top1_se": top_se}  # fmt: skip


def markdown_table(header: list[str], align: str, rows: list[list[str]]) -> str:
    """A markdown table: `align` holds one `l` (left) or `r` (right) per column."""
    rule = "|".join("---" if a == "l" else "---:" for a in align)
    return "\n".join(["| " + " | ".join(header) + " |", f"|{rule}|"] + ["| " + " | ".join(r) + " |" for r in rows])


def table(results: dict[str, dict], k: int) -> str:
    header = ["model", "steps", f"mean std of r over k={k}", "mean max−min of r", "mean r", "β·(max−min) at β=10",
              "mean std of LM top-k logits"]  # fmt: skip
    rows = [
        [
            f"`{name}`",
            str(s["steps"]),
            f"{s['mean_std']:.4f}",
            f"{s['mean_range']:.4f}",
            f"{s['mean_reward']:.3f}",
            f"{10 * s['mean_range']:.2f}",
            f"{s['lm_logit_std']:.2f}",
        ]
        for name, s in results.items()
    ]
    return markdown_table(header, "lrrrrrr", rows)


def agreement_table(agreement: dict[str, dict], k: int) -> str:
    header = [f"scorers (same steps, same k={k} candidates)", "steps", "mean Spearman ρ", "same top candidate"]
    rows = [
        [
            pair,
            str(s["steps"]),
            f"{s['mean_spearman']:.3f} ± {s['spearman_se']:.3f}",
            f"{s['top1_agreement']:.3f} ± {s['top1_se']:.3f}",
        ]
        for pair, s in agreement.items()
    ]
    return markdown_table(header, "lrrr", rows)


def difference_lines(differences: dict[str, tuple[float, float]]) -> str:
    return "\n".join(f"- {name}: {m:+.3f} ± {se:.3f}" for name, (m, se) in differences.items())


def main(a: SpreadArguments) -> dict[str, dict]:
    lm_path = resolve("smollm2-135m")
    tokenizer = AutoTokenizer.from_pretrained(lm_path, padding_side="left")
    lm = AutoModelForCausalLM.from_pretrained(lm_path).eval()
    names = [n.strip() for n in a.models.split(",") if n.strip()]
    results, rows, candidates, rewards, groups = {}, {}, {}, {}, {}
    for name in names:
        task = Path(name).name.rsplit("-", 1)[-1]
        if task not in PROMPTS:
            raise ValueError(f"{name!r}: the model's name must end in -toxicity or -sentiment (its task's prompts).")
        if task not in rows:
            sampled = sample_steps(lm, tokenizer, load_prompts(PROMPTS[task], a.num_prompts), a)
            rows[task] = [(ids, n) for ids, n in sampled if len(ids) > n]  # an immediate EOS leaves no step
            if not rows[task]:
                raise ValueError(f"Every {task} continuation ended at once: no decoding step to measure.")
            candidates[task] = [step_candidates(lm, ids, n, a.top_k) for ids, n in rows[task]]
            groups[task] = torch.cat([torch.full((len(ids) - n,), i) for i, (ids, n) in enumerate(rows[task])])
            rewards[JUDGES[task]] = judge_scores(task, tokenizer, rows[task], candidates[task])
        results[name], rewards[name] = measure(name, rows[task], candidates[task])
        print(json.dumps({name: results[name]}))
    # the models (and the judge) of one task scored the same steps' candidates: how alike do they order them?
    agreement, differences = {}, {}
    for task in rows:
        models, judge = [n for n in names if Path(n).name.endswith(task)], JUDGES[task]
        steps = {(x, y): step_agreement(rewards[x], rewards[y]) for x, y in combinations([*models, judge], 2)}
        for (x, y), (rho, top) in steps.items():
            agreement[f"`{x}` vs `{y}`"] = agreement_of(rho, top, groups[task])
        for x, y in combinations(models, 2):  # does one model order the candidates more like the judge?
            rho_x, rho_y = steps[x, judge][0], steps[y, judge][0]
            differences[f"ρ(`{x}`, {judge}) − ρ(`{y}`, {judge})"] = clustered_mean(rho_x - rho_y, groups[task])
    out = Path(a.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    record = {"args": vars(a), "results": results, "agreement": agreement, "judge_agreement_differences": differences}
    (out / "spread.json").write_text(json.dumps(record, indent=2) + "\n")
    text = "\n\n".join([table(results, a.top_k), agreement_table(agreement, a.top_k), difference_lines(differences)])
    (out / "spread.md").write_text(text + "\n")
    print(text)
    return results


if __name__ == "__main__":
    main(HfArgumentParser(SpreadArguments).parse_args_into_dataclasses()[0])
