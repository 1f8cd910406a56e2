"""Held-out quality of RAD-Q on the LM's own trunk over tap layer L × own blocks (docs/trunk.md).

    OMP_NUM_THREADS=1 python examples/trunk_grid.py --data_dir ../shared/data --out docs/trunk

The LM (the embedded SmolLM2-135M) is frozen, so its layer-L states of each text do not change during training: they
are computed once (one forward up to the highest L, every tapped layer kept, fp16 in memory) and every cell of the
grid trains only its norm, top and head on them with the model's own `run_top` / `_token_scores` and the project's
`cumulative_mse_loss` — the same loss and optimiser as `RewardRegressionTrainer` runs on
`RadQTrunkForRewardModeling.forward`, without re-running the trunk for each cell. Held-out: the trainer's sample of
the toxicity test split (1000 texts, shuffle seed 1) and SST-2 dev, scored at each text's last token like the
shipped models' cards (accuracy at 0.5, MSE; ROC AUC with sklearn, labels ≥ 0.5 positive).
"""

import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, HfArgumentParser

from rad_q_hf import RadQTrunkForRewardModeling
from rad_q_hf.data import load_sentiment, load_toxicity, with_validation
from rad_q_hf.embedded import resolve
from rad_q_hf.modeling_rad_v import cumulative_mse_loss


@dataclass
class GridArguments:
    data_dir: str = field(default="../shared/data")
    out: str = field(default="docs/trunk")
    tasks: str = field(default="toxicity,sentiment")
    layers: str = field(default="3,6,9")
    blocks: str = field(default="0,1")
    tap_norm: str = field(default="lm")
    train_texts: int = field(default=1024)
    eval_texts: int = field(default=1000, metadata={"help": "The first N of the held-out sample (CPU budget)."})
    validation_percent: float = field(
        default=5.0,
        metadata={"help": "Carve this share of train (salted hash) as the validation split the cells are picked on."},
    )
    epochs: int = field(default=3)
    batch_size: int = field(default=32)
    learning_rate: float = field(default=1e-4, metadata={"help": "Peak rate of the norm and the own blocks."})
    head_learning_rate: float = field(default=1e-5, metadata={"help": "Peak rate of W (eᵀWg moves fast)."})
    baseline_learning_rate: float = field(default=1e-3, metadata={"help": "Peak rate of the baseline b."})
    cache_dir: str | None = field(default=None, metadata={"help": "Keep the tapped states here between runs."})
    seed: int = field(default=1)
    reference: bool = field(default=False, metadata={"help": "Also score the shipped rad-q-<task> on the same texts."})
    plot: str | None = field(
        default=None, metadata={"help": "Only plot: comma-separated grid.json files, each optionally `label=path`."}
    )
    plot_name: str = field(default="quality.png", metadata={"help": "File name of the plot in --out."})
    save_dir: str | None = field(
        default=None, metadata={"help": "Save each cell's model to <save_dir>/<task>-L<L>-b<n>."}
    )


def batches_of(ds, tokenizer, max_length, batch_size):
    """Right-padded batches of similar lengths: (ids, mask, labels)."""
    if len(ds) == 0:
        return []
    enc = tokenizer(list(ds["text"]), add_special_tokens=False, truncation=True, max_length=max_length)["input_ids"]
    labels = torch.tensor([row[0] for row in ds["labels"]], dtype=torch.float32)
    order = sorted(range(len(enc)), key=lambda i: len(enc[i]))
    out = []
    for s in range(0, len(order), batch_size):
        idx = order[s : s + batch_size]
        T = max(len(enc[i]) for i in idx)
        ids = torch.full((len(idx), T), tokenizer.pad_token_id or 0)
        mask = torch.zeros(len(idx), T, dtype=torch.long)
        for r, i in enumerate(idx):
            ids[r, : len(enc[i])] = torch.tensor(enc[i])
            mask[r, : len(enc[i])] = 1
        out.append((ids, mask, labels[idx][:, None], idx))
    return out


@torch.no_grad()
def tapped_states(lm, batches, layers):
    """{L: [(B, T, d) fp16 per batch]}: one LM forward up to max(layers) per batch, every tapped layer kept."""
    from tqdm.auto import tqdm

    states = {L: [] for L in layers}
    for ids, mask, _, _ in tqdm(batches, desc="LM states", mininterval=10):
        hs = lm.model(input_ids=ids, attention_mask=mask, output_hidden_states=True, use_cache=False).hidden_states
        for L in layers:
            states[L].append(hs[L].half())
    return states


def prefix_loss(rm, h, ids, mask, labels):
    """The trunk model's training loss (as its forward computes it) from precomputed layer-L states."""
    g, _ = rm.run_top(h.float(), mask)
    r = rm._token_scores(g[:, :-1], ids[:, 1:, None])[..., 0] + rm._baselines(g[:, :-1])  # (B, T − 1, 1)
    rewards = torch.cat([r.new_zeros(r.shape[0], 1, 1), r], 1)
    reward_mask = torch.cat([mask[:, :1] * 0, mask[:, 1:] * mask[:, :-1]], 1)
    return cumulative_mse_loss(rewards, labels, reward_mask), rewards


def train_cell(lm, L, n, train, train_states, args, label="score"):
    torch.manual_seed(args.seed)
    rm = RadQTrunkForRewardModeling.from_lm(lm, tap_layer=L, num_blocks=n, tap_norm=args.tap_norm, labels=[label])
    rm.train()
    params = [p for p in rm.parameters() if p.requires_grad]
    # eᵀWg moves by ~lr·‖e‖₁‖g‖₁ per Adam step: W wants a far smaller rate than the baseline (and with ~1k texts a
    # larger one memorises tokens: held-out accuracy fell from 0.60 to 0.57 at 1e-4 and to 0.55 at 1e-3, SST-2, L = 9).
    groups = [
        {"params": list(rm.reward_head.parameters()), "lr": args.head_learning_rate},
        {"params": list(rm.baseline_head.parameters()), "lr": args.baseline_learning_rate},
        {"params": [p for n, p in rm.named_parameters() if not n.startswith(("reward_head", "baseline_head"))]},
    ]
    opt = torch.optim.AdamW(groups, lr=args.learning_rate, betas=(0.9, 0.95), eps=1e-12, weight_decay=0.01)
    steps = args.epochs * len(train)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / 30) * max(0.0, 1 - s / steps))
    g = torch.Generator().manual_seed(args.seed)
    t0, tokens = time.perf_counter(), 0
    for _ in range(args.epochs):
        for b in torch.randperm(len(train), generator=g).tolist():
            ids, mask, labels, _ = train[b]
            loss, _ = prefix_loss(rm, train_states[L][b], ids, mask, labels)
            opt.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 2.0)
            opt.step()
            sched.step()
            tokens += int(mask.sum())
    return rm.eval(), tokens / (time.perf_counter() - t0), steps


@torch.no_grad()
def evaluate(rm, L, test, test_states, toxicity):
    from sklearn.metrics import roc_auc_score

    preds, labels = [], []
    for b, (ids, mask, y, _) in enumerate(test):
        _, rewards = prefix_loss(rm, test_states[L][b], ids, mask, y)
        last = mask.sum(1) - 1
        preds.append(rewards[torch.arange(len(ids)), last, 0])
        labels.append(y[:, 0])
    p, y = torch.cat(preds), torch.cat(labels)
    out = {"accuracy": float(((p >= 0.5) == (y >= 0.5)).float().mean()), "mse": float((p - y).pow(2).mean())}
    out["roc_auc"] = float(roc_auc_score((y >= 0.5).numpy(), p.numpy()))
    return out


@torch.no_grad()
def shipped_reference(task, test, tokenizer, max_length):
    """The shipped separate RAD-Q model of the task, scored on the same held-out texts at their last token."""
    from sklearn.metrics import roc_auc_score
    from transformers import AutoModel

    from rad_q_hf import default_checkpoint
    from rad_q_hf.training.reward_trainer import last_token, prefix_rewards

    model = AutoModel.from_pretrained(default_checkpoint(f"rad-q-{task}")).eval()
    preds, labels = [], []
    for ids, mask, y, _ in batches_of(test, tokenizer, max_length, 32):
        preds.append(last_token(prefix_rewards(model, ids, mask)[0], mask)[:, 0])
        labels.append(y[:, 0])
    p, y = torch.cat(preds), torch.cat(labels)
    out = {"accuracy": float(((p >= 0.5) == (y >= 0.5)).float().mean()), "mse": float((p - y).pow(2).mean())}
    return out | {"roc_auc": float(roc_auc_score((y >= 0.5).numpy(), p.numpy()))}


def plot(files: list[str], png: str) -> None:
    """Held-out ROC AUC (toxicity) and accuracy (SST-2) against the tap layer, one line per file and number of own
    blocks (`label=path` names a file's lines); the shipped separate RAD-Q model of the same texts as a dashed line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = [(f.split("=", 1) if "=" in f else ("", f)) for f in files]
    results = [(label, json.loads(Path(path).read_text())) for label, path in runs]
    panels = [("toxicity", "roc_auc", "toxicity: ROC AUC"), ("sentiment", "accuracy", "SST-2 dev: accuracy")]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.5))
    for ax, (task, metric, title) in zip(axes, panels, strict=True):
        for label, grid in results:
            cells = [k.split("/") for k in grid if k.startswith(task + "/L")]
            for n in sorted({int(b[1:]) for _, _, b in cells}):
                layers = sorted({int(L[1:]) for _, L, b in cells if b == f"b{n}"})
                values = [grid[f"{task}/L{L}/b{n}"][metric] for L in layers]
                ax.plot(layers, values, "o-" if len(layers) > 1 else "*", label=f"{n} own blocks {label}".strip())
        references = [grid[f"{task}/reference"][metric] for _, grid in results if f"{task}/reference" in grid]
        if references:
            ax.axhline(references[0], ls="--", c="k", label="separate RAD-Q (shipped)")
        ax.set(title=title, xlabel="tap layer L of SmolLM2-135M (30 layers)", ylabel=metric)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(png, dpi=120)


def main(args: GridArguments):
    if args.plot:
        plot(args.plot.split(","), str(Path(args.out) / args.plot_name))
        return
    path = resolve("smollm2-135m")
    tokenizer = AutoTokenizer.from_pretrained(path)
    lm = AutoModelForCausalLM.from_pretrained(path).eval()
    layers, blocks = [int(x) for x in args.layers.split(",")], [int(x) for x in args.blocks.split(",")]
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    results_file = out_dir / "grid.json"
    results = json.loads(results_file.read_text()) if results_file.exists() else {}
    for task in args.tasks.split(","):
        toxicity = task == "toxicity"
        data = load_toxicity("offline", args.data_dir) if toxicity else load_sentiment("sst2", args.data_dir)
        data = with_validation(data, args.validation_percent)
        validation = data["validation"].shuffle(seed=1) if "validation" in data else data["train"].select([])
        validation = validation.select(range(min(args.eval_texts, len(validation))))  # empty: --validation_percent 0
        train = data["train"].shuffle(seed=args.seed).select(range(min(args.train_texts, len(data["train"]))))
        test = data["test"].shuffle(seed=1)
        test = test.select(range(1000)) if len(test) > 1000 else test  # the trainer's held-out sample
        test = test.select(range(min(args.eval_texts, len(test))))
        max_length = 64 if toxicity else 48  # as the shipped models
        tb = batches_of(train, tokenizer, max_length, args.batch_size)
        eb = batches_of(test, tokenizer, max_length, 64)
        vb = batches_of(validation, tokenizer, max_length, 64)
        if args.reference and f"{task}/reference" not in results:
            results[f"{task}/reference"] = shipped_reference(task, test, tokenizer, max_length)
            print(f"{task}/reference", json.dumps(results[f"{task}/reference"]), flush=True)
            results_file.write_text(json.dumps(results, indent=2) + "\n")
        if all(f"{task}/L{L}/b{n}" in results for L in layers for n in blocks):
            continue
        t0 = time.perf_counter()
        # one file per layer and split sizes: a later run for any subset of the layers (e.g. shipping one cell) reuses it
        cache = Path(args.cache_dir) if args.cache_dir else None
        files = (
            {L: cache / f"{task}-{len(train)}-{len(validation)}-{len(test)}-L{L}.pt" for L in layers} if cache else {}
        )
        if cache and all(f.exists() for f in files.values()):
            parts = {L: torch.load(f) for L, f in files.items()}
            ts, vs, es = ({L: parts[L][i] for L in layers} for i in range(3))
        else:
            ts, vs, es = (tapped_states(lm, b, layers) for b in (tb, vb, eb))
            if cache:
                cache.mkdir(parents=True, exist_ok=True)
                for L, f in files.items():
                    torch.save((ts[L], vs[L], es[L]), f)
        n_texts = f"{len(train)} + {len(validation)} + {len(test)}"
        print(f"{task}: states of {n_texts} texts in {time.perf_counter() - t0:.0f}s", flush=True)
        for L in layers:
            for n in blocks:
                key = f"{task}/L{L}/b{n}"
                if key in results:
                    continue
                rm, tok_s, steps = train_cell(lm, L, n, tb, ts, args, "toxicity" if toxicity else "positive")
                metrics = evaluate(rm, L, eb, es, toxicity)
                if len(validation):
                    metrics["validation"] = evaluate(rm, L, vb, vs, toxicity)
                params = sum(p.numel() for p in rm.parameters())
                if args.save_dir:
                    rm.save_pretrained(Path(args.save_dir) / f"{task}-L{L}-b{n}")
                results[key] = metrics | {"steps": steps, "train_tokens_per_s": tok_s, "params": params}
                print(key, json.dumps(results[key]), flush=True)
                results_file.write_text(json.dumps(results, indent=2) + "\n")
    results["settings"] = {k: v for k, v in vars(args).items()}
    results_file.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    (grid_args,) = HfArgumentParser(GridArguments).parse_args_into_dataclasses()
    main(grid_args)
    print("done")
