"""`rad-q evaluate`: sample continuations (resumable, sharded over processes), score them with the judges, report.

The steps live in their own modules: `config` (what to run), `models` (loading and fingerprints), `storage` (the
resumable files), `generation` (sampling), `scoring` (judges and metrics) and `report` (results.json / .md, plots).
This module runs them in order. Layout of an output folder: see `storage`, `scoring` and `report`.
"""

import sys

import torch
from tqdm.auto import tqdm

from .config import TASKS, EvaluationConfig, EvaluationError, Setting
from .generation import generate_setting
from .models import load_lm, load_reward_model, load_tokenizer, task_label
from .prompts import load_prompts
from .scoring import Judges, comparisons, frontier_comparisons, null_to_nan, per_prompt, score_setting, setting_metrics
from .storage import check_resume, done, merge_generations


def say(state, message: str) -> None:
    """A progress line on stderr, from the main process only (kept clear of tqdm bars)."""
    if state.is_main_process:
        tqdm.write(message, file=sys.stderr)


def progress_on_disk(config: EvaluationConfig, prompts: list[str]) -> dict[str, int]:
    """Setting name -> how many of its prompts already have samples in the output folder."""
    return {s.name: len(done(config, s, prompts) & set(range(len(prompts)))) for s in config.settings()}


def run_evaluation(config: EvaluationConfig, on_batch=None) -> dict | None:
    """Generate, score and report every setting; returns the results on the main process (None elsewhere).

    Under `accelerate launch` every process samples its share of the prompt batches; the main process merges them
    and scores. `on_batch(setting, batch_index)` is called after each batch is written (tests interrupt there).
    A process group this call creates is destroyed at the end; one that existed before is left alone.
    """
    from accelerate import PartialState

    created_group = not (torch.distributed.is_available() and torch.distributed.is_initialized())
    state = PartialState(cpu=config.device == "cpu")
    prompts = load_prompts(config.prompts, config.num_prompts)
    fingerprints = check_resume(config) if state.is_main_process else None
    state.wait_for_everyone()
    counts = progress_on_disk(config, prompts)
    if any(counts.values()):
        listing = ", ".join(f"{name} {n}/{len(prompts)}" for name, n in counts.items())
        say(state, f"resuming in {config.output}: prompts already sampled: {listing}")
    todo = [s for s in config.settings() if counts[s.name] < len(prompts)]
    if todo:
        generate_all(config, todo, prompts, state, on_batch)
    state.wait_for_everyone()
    report = score_and_report(config, prompts, fingerprints) if state.is_main_process else None
    state.wait_for_everyone()
    if created_group:
        state.destroy_process_group()  # an open group at exit can abort a rank after the work is done
    return report


def generate_all(config: EvaluationConfig, todo: list[Setting], prompts: list[str], state, on_batch=None) -> None:
    say(state, f"loading the LM {config.lm}")
    tokenizer = load_tokenizer(config.lm)
    # reward models load (and are checked) before any sampling: a wrong one should not surface an hour in
    lm = load_lm(config.lm, config.device)  # first: a trunk reward model is checked against it
    reward_models = {}
    for method in dict.fromkeys(s.method for s in todo if s.method != "none"):
        say(state, f"loading the {method} reward model {config.reward_model_name(method)}")
        reward_models[method] = load_reward_model(config.reward_model_name(method), method, config.device, lm)
        task_label(reward_models[method], config.task)  # one of another task is refused here too
    for setting in todo:
        generate_setting(setting, prompts, lm, tokenizer, reward_models.get(setting.method), config, state, on_batch)


def score_and_report(config: EvaluationConfig, prompts: list[str], fingerprints: dict[str, str]) -> dict:
    from .report import write_report

    judges, results, per_prompt_values, perplexities = Judges(config), {}, {}, {}
    for setting in config.settings():
        rows = merge_generations(setting, len(prompts), config.output)
        scores = score_setting(setting, rows, judges, config.output)
        results[setting.name] = setting_metrics(setting, rows, scores)
        per_prompt_values[setting.name] = per_prompt(scores)
        if "perplexity" in scores:
            perplexities[setting.name] = null_to_nan(scores["perplexity"])
    frontier = frontier_comparisons(config, per_prompt_values, perplexities)
    return write_report(
        config, results, judges.names(), comparisons(config, per_prompt_values), fingerprints, frontier
    )


__all__ = ["TASKS", "EvaluationConfig", "EvaluationError", "Setting", "run_evaluation", "score_and_report"]
