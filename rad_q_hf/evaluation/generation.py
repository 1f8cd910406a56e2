"""Sampling a setting's continuations, one fixed prompt batch at a time, appended to this process's part file.

Prompts are cut into fixed batches of `prompts_per_batch`; batch b is sampled with its own seed and handled by
process b mod world_size, so a run's samples do not depend on the number of processes, nor on where a previous
run was interrupted.
"""

import time

import torch
from tqdm.auto import tqdm

from .config import EvaluationConfig, Setting
from .storage import append_rows, done, part_file, read_rows


def prompt_batches(num_prompts: int, size: int) -> list[range]:
    return [range(start, min(start + size, num_prompts)) for start in range(0, num_prompts, size)]


def todo_batches(config: EvaluationConfig, setting: Setting, num_prompts: int, state) -> list[tuple[int, range]]:
    """This process's share of the prompt batches whose samples are not all on disk yet."""
    finished = done(config, setting)
    batches = list(enumerate(prompt_batches(num_prompts, config.prompts_per_batch)))
    return [(b, idx) for b, idx in batches[state.process_index :: state.num_processes] if not set(idx) <= finished]


def generate_setting(setting: Setting, prompts: list[str], lm, tokenizer, reward_model, config: EvaluationConfig,
                     state, on_batch=None) -> None:  # fmt: skip
    """Sample this process's share of the prompt batches not already on disk, appending each batch when done."""
    finished = done(config, setting)
    part = part_file(config.output, setting, state.process_index)
    read_rows(part, repair=True)
    todo = todo_batches(config, setting, len(prompts), state)
    for b, idx in tqdm(todo, desc=setting.name, disable=not state.is_main_process, unit="batch"):
        texts, seconds = sample_batch(setting, [prompts[i] for i in idx], lm, tokenizer, reward_model, config, b)
        S = config.samples_per_prompt
        rows = [{"index": i, "prompt": prompts[i], "continuations": texts[j * S : (j + 1) * S],
                 "seconds": seconds / len(idx)} for j, i in enumerate(idx) if i not in finished]  # fmt: skip
        append_rows(part, rows)
        if on_batch is not None:
            on_batch(setting, b)


def sample_batch(setting: Setting, batch_prompts: list[str], lm, tokenizer, reward_model, config: EvaluationConfig,
                 batch_index: int) -> tuple[list[str], float]:  # fmt: skip
    """`samples_per_prompt` continuations of each prompt (prompt-major), and the seconds `generate` took."""
    from .models import steering_processor

    enc = tokenizer(batch_prompts, return_tensors="pt", padding=True).to(lm.device)  # left padded
    processors = []
    if setting.method != "none":
        processors = [steering_processor(setting.method, config.task, reward_model, setting.beta, config.top_k,
                                         enc["attention_mask"], tokenizer)]  # fmt: skip
    torch.manual_seed(config.seed * 1_000_003 + batch_index)
    start = time.perf_counter()
    with torch.no_grad():
        out = lm.generate(**enc, do_sample=True, top_k=config.top_k, top_p=1.0, temperature=1.0,
                          max_new_tokens=config.max_new_tokens, num_return_sequences=config.samples_per_prompt,
                          logits_processor=processors, pad_token_id=tokenizer.pad_token_id)  # fmt: skip
    seconds = time.perf_counter() - start
    return tokenizer.batch_decode(out[:, enc["input_ids"].shape[1] :], skip_special_tokens=True), seconds


__all__ = ["generate_setting", "prompt_batches", "sample_batch", "todo_batches"]
