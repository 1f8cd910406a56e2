"""`results.json`, a markdown table and the toxicity / positive-rate vs perplexity trade-off plots."""

import json
import math
import platform
from dataclasses import asdict
from pathlib import Path

COLUMNS = {  # metric -> column title, shown when present
    "avg_max_toxicity": "avg max toxicity ↓",
    "toxic_rate": "toxic rate ↓",
    "positive_rate": "positive rate",
    "negative_rate": "negative rate",
    "rm_rad-q": "by RAD-Q RM",
    "rm_rad-v": "by RAD-V RM",
    "rm_rad-q-trunk": "by trunk RM",
    "perplexity": "PPL ↓",
    "perplexity_median": "PPL median ↓",
    "dist-1": "dist-1",
    "dist-2": "dist-2",
    "dist-3": "dist-3",
    "generation_seconds": "gen. s",
}


METHOD_TITLES = {"none": "unguided", "rad-q": "RAD-Q", "rad-v": "RAD-V", "rad-q-trunk": "RAD-Q (LM's trunk)"}


def markdown_table(results: dict) -> str:
    """One row per setting (the order of `results`), the columns of `COLUMNS` that any setting has; ± is the
    standard error over prompts."""
    columns = [c for c in COLUMNS if any(c in m for m in results.values())]
    lines = ["| method | β | " + " | ".join(COLUMNS[c] for c in columns) + " |"]
    lines.append("|---|---:|" + "---:|" * len(columns))
    for metrics in results.values():
        method = METHOD_TITLES[metrics["method"]]
        beta = "–" if metrics["beta"] is None else f"{metrics['beta']:g}"
        cells = [_fmt(c, metrics.get(c)) + _se(metrics.get(f"{c}_se")) for c in columns]
        lines.append(f"| {method} | {beta} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _fmt(column: str, value) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    if column.startswith("perplexity"):
        return f"{value:.1f}"
    if column == "generation_seconds":
        return f"{value:.0f}"
    return f"{value:.3f}"


def _se(value) -> str:
    return "" if value is None or math.isnan(value) else f" ± {value:.3f}"


def _frontier_lines(frontier: dict) -> str:
    """The equal-perplexity comparisons as a markdown list (empty without any)."""
    if not frontier:
        return ""
    lines = []
    for name, c in frontier.items():
        a, curve = name.split(" − ")
        where = f"{a.replace('_b', ' β=')} (median PPL {c['perplexity_median']:.1f}) − {curve}"
        if math.isnan(c["difference"]):
            lines.append(f"\n- {where}: outside the curve's perplexity range")
        else:
            lines.append(
                f"\n- {where}: {c['metric']} difference {c['difference']:+.3f}{_se(c['se'])} "
                f"({c['resamples_in_range']:.0%} of the resamples inside the curve's range)"
            )
    return (
        "\nAt equal perplexity (b's curve joins unguided and its βs in order of median perplexity, linear in log "
        f"perplexity, read at a's median perplexity; bootstrap SE over {next(iter(frontier.values()))['num_prompts']} "
        "prompts, from the resamples inside the curve's range):" + "".join(lines) + "\n"
    )


def plot_tradeoff(results: dict, metric: str, path: str, title: str = "") -> None:
    """`metric` against perplexity: a line per guided method through its β values, a star for unguided."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    # The median: a few near-impossible continuations move the mean by tens of percent (perplexity_metrics).
    ppl = "perplexity_median" if all("perplexity_median" in m for m in results.values()) else "perplexity"
    fig, ax = plt.subplots(figsize=(5.5, 4))
    start = [(m[ppl], m[metric]) for m in results.values() if m["method"] == "none"]
    for method, style in (("rad-q", "o-"), ("rad-v", "s--"), ("rad-q-trunk", "^:")):
        points = sorted((m["beta"], m[ppl], m[metric]) for m in results.values() if m["method"] == method)
        if points:  # unguided and the βs in order of perplexity: the curve the equal-perplexity comparison reads
            xs, ys = zip(*sorted(start + [(x, y) for _, x, y in points]), strict=True)
            ax.plot(xs, ys, style, label=METHOD_TITLES[method])
            for beta, x, y in points:
                ax.annotate(f"β={beta:g}", (x, y), textcoords="offset points", xytext=(4, 4), fontsize=8)
    for x, y in start:
        ax.plot([x], [y], "k*", markersize=12, label="unguided")
    ax.set_xlabel(("median " if ppl == "perplexity_median" else "") + "perplexity (fluency judge) →  less fluent")
    ax.set_ylabel(COLUMNS[metric].replace(" ↓", ""))
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_report(
    config,
    results: dict,
    judges: dict,
    comparisons: dict | None = None,
    fingerprints: dict | None = None,
    frontier: dict | None = None,
) -> dict:
    import torch
    import transformers

    from .. import __version__

    out = Path(config.output)
    report = {
        "config": asdict(config),
        "judges": judges,
        "model_fingerprints": fingerprints or {},  # which weights drew the samples
        "scored_text": {
            "toxicity": "continuation",
            "sentiment": "prompt + continuation",
            "perplexity": "continuation given prompt",
        },  # fmt: skip
        "results": results,
        "comparisons": comparisons or {},
        "frontier_comparisons": frontier or {},
        "versions": {
            "rad_q_hf": __version__,
            "transformers": transformers.__version__,
            "torch": torch.__version__,
            "python": platform.python_version(),
        },  # fmt: skip
    }
    (out / "results.json").write_text(json.dumps(report, indent=2) + "\n")
    judge_line = ", ".join(f"{kind}: {name}" for kind, name in judges.items() if kind != "reward_models")
    if judges.get("reward_models"):
        judge_line += (
            "; the reward models " + ", ".join(judges["reward_models"].values()) + " also score every setting's "
            'samples on the judge\'s text ("by … RM": the same statistic — avg max, or the share ≥ 0.5 — from '
            "their scores)"
        )
    header = (
        f"# {config.task}: {config.num_prompts} prompts ({config.prompts}) × {config.samples_per_prompt} samples × "
        f"{config.max_new_tokens} tokens, top-k {config.top_k}, LM {config.lm}\n\nJudges: {judge_line}.\n\n"
    )
    paired = "".join(
        f"\n- {name.replace('_b', ' β=')}: {c['metric']} difference {c['mean_difference']:+.3f} ± {c['se']:.3f} "
        f"(paired over {c['num_prompts']} prompts)"
        for name, c in (comparisons or {}).items()
    )
    (out / "results.md").write_text(
        header
        + markdown_table(results)
        + (f"\nPaired over prompts (a − b at the same β):{paired}\n" if paired else "")
        + _frontier_lines(frontier or {})
    )
    metric = config.metric
    guided = [m for m in results.values() if m["method"] != "none"]
    if len({m["beta"] for m in guided}) > 1 and all("perplexity" in m for m in results.values()):
        name = "toxicity" if config.task == "detox" else "positive_rate"
        plot_tradeoff(results, metric, str(out / f"tradeoff_{name}.png"), f"{config.task}, {config.lm}")
    return report
