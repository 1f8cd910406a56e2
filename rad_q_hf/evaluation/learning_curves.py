"""Learning curves (held-out metric vs optimizer step) from a Trainer's log history (`trainer_state.json`).

A run trained with `--validation_percent` and `--eval_strategy steps` logs `eval_validation_*` and `eval_test_*` at
every evaluation; a run with one held-out split logs `eval_*`. Curves are named `<split>_<metric>`.
"""

import json
import math
import re
from pathlib import Path

Curves = dict[str, list[tuple[int, float]]]
_CHECKPOINT = re.compile(r"checkpoint-(\d+)")  # how the Trainer names the folder of its step-N checkpoint


def checkpoint_step(folder: str | Path) -> int:
    """The optimizer step N of a Trainer's `checkpoint-N` folder.

    >>> checkpoint_step("runs/rad-v/checkpoint-1950")
    1950
    """
    match = _CHECKPOINT.fullmatch(Path(folder).name)
    if match is None:
        raise ValueError(f"{folder} is not a Trainer checkpoint folder (`checkpoint-N`).")
    return int(match[1])


def logged_at_step(log_history: list[dict], step: int) -> dict:
    """Everything logged at `step` (the Trainer logs the loss, each split's evaluation and so on as separate
    entries), merged into one dict."""
    return {k: v for entry in log_history if entry.get("step") == step for k, v in entry.items()}


def _checkpoints(run_dir: Path) -> dict[int, Path]:
    """{step: folder} of the run's saved `checkpoint-N` folders."""
    return {
        checkpoint_step(p): p for p in run_dir.glob("checkpoint-*") if p.is_dir() and _CHECKPOINT.fullmatch(p.name)
    }


def read_log_history(run_dir: str | Path) -> list[dict]:
    """The log history of a run folder: its own `trainer_state.json`, else that of its latest `checkpoint-N`."""
    run_dir = Path(run_dir)
    latest_first = sorted(_checkpoints(run_dir).items(), reverse=True)
    candidates = [run_dir / "trainer_state.json"] + [folder / "trainer_state.json" for _, folder in latest_first]
    for path in candidates:
        if path.is_file():
            return json.loads(path.read_text())["log_history"]
    raise FileNotFoundError(f"No trainer_state.json in {run_dir} or its checkpoint-* folders.")


def learning_curves(log_history: list[dict], metrics: tuple[str, ...] = ("auc", "mse", "loss")) -> Curves:
    """`{split_metric: [(step, value), ...]}` for every logged held-out split, plus `train_loss`, sorted by step."""
    curves: Curves = {}
    for entry in log_history:
        step = entry.get("step")
        for key, value in entry.items():
            name = _curve_name(key, metrics)
            if name and step is not None and isinstance(value, int | float) and not math.isnan(value):
                curves.setdefault(name, []).append((int(step), float(value)))
    return {name: sorted(points) for name, points in sorted(curves.items())}


def best_checkpoint(run_dir: str | Path, curve: str = "validation_accuracy", higher_is_better: bool = True) -> Path:
    """The run's saved `checkpoint-N` whose step scored best on `curve` (a `learning_curves` name; the earliest of
    equals): how a run is picked on its validation split, never on the test split it reports.

    >>> import json, tempfile
    >>> run = Path(tempfile.mkdtemp())
    >>> history = [{"step": s, "eval_validation_accuracy": a} for s, a in ((5, 0.8), (10, 0.9), (15, 0.85))]
    >>> for step in (5, 10, 15):
    ...     (run / f"checkpoint-{step}").mkdir()
    >>> _ = (run / "trainer_state.json").write_text(json.dumps({"log_history": history}))
    >>> best_checkpoint(run).name, best_checkpoint(run, higher_is_better=False).name
    ('checkpoint-10', 'checkpoint-5')
    """
    run_dir = Path(run_dir)
    metric = curve.rsplit("_", 1)[-1]
    points = dict(learning_curves(read_log_history(run_dir), (metric,)).get(curve, []))
    saved = _checkpoints(run_dir)
    scored = [(value if higher_is_better else -value, -step) for step, value in points.items() if step in saved]
    if not scored:
        raise FileNotFoundError(
            f"No checkpoint of {run_dir} has a logged {curve!r} (logged: {sorted(points)}, saved: {sorted(saved)}); "
            "train with --validation_percent and save_steps a multiple of eval_steps."
        )
    return saved[-max(scored)[1]]


def _curve_name(key: str, metrics: tuple[str, ...]) -> str | None:
    if key == "loss":
        return "train_loss"
    if not key.startswith("eval_"):
        return None
    rest = key.removeprefix("eval_")
    for metric in metrics:
        if rest == metric:
            return f"held_out_{metric}"
        if rest.endswith(f"_{metric}"):
            return f"{rest.removesuffix(f'_{metric}')}_{metric}"
    return None


def plot_learning_curves(runs: dict[str, Curves], path: str | Path, metrics: tuple[str, ...] = ("auc", "mse")) -> None:
    """One panel per metric, one line per (run, split); baselines as dashed lines via `runs[...]["baseline_<m>"]`."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(metrics), figsize=(5 * len(metrics), 3.8), squeeze=False)
    for ax, metric in zip(axes[0], metrics, strict=True):
        for run, curves in runs.items():
            for name, points in curves.items():
                if name.endswith(f"_{metric}") and points:
                    steps, values = zip(*points, strict=True)
                    style = "--" if name.startswith("baseline") else "-"
                    ax.plot(
                        steps, values, style, marker="o" if len(points) < 30 else None, ms=3, label=f"{run}: {name}"
                    )
        ax.set_xlabel("optimizer step")
        ax.set_ylabel(metric.upper() if metric == "auc" else metric)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


__all__ = [
    "Curves",
    "best_checkpoint",
    "checkpoint_step",
    "learning_curves",
    "logged_at_step",
    "plot_learning_curves",
    "read_log_history",
]
