"""Reward-augmented decoding with the reward model of this folder (written by rad_q_hf's `save_pretrained`).

    lm.generate(**batch, custom_generate="<this folder or Hub id>", trust_remote_code=True,
                beta=10.0, direction="minimize", top_k=20, do_sample=True, max_new_tokens=20)

Keyword arguments are those of `rad_q_hf.reward_augmented_generate` (`beta`, `label`, `direction`, `top_k`, `top_p`,
`temperature`) and `generate`'s. Needs the `rad_q_hf` package (`pip install rad-q-hf`): the reward model itself loads
without it (`AutoModel.from_pretrained(folder, trust_remote_code=True)`), but the decoding code is not copied here.
"""

import sys

try:
    from rad_q_hf import reward_augmented_generate
    from rad_q_hf.generation import load_reward_model
except ImportError as err:  # transformers skips imports inside `try` when it checks a remote file's requirements
    raise ImportError(
        "This reward model's custom_generate needs the rad_q_hf package: pip install rad-q-hf (or use the "
        "RADQ / RADV logits processors of an installed rad_q_hf)."
    ) from err


def _this_repo() -> str:
    """The folder or Hub id `generate(custom_generate=...)` loaded this file from.

    transformers copies this file into its module cache and does not pass the repository to the function, so read
    it from the calling `generate`'s arguments.
    """
    frame = sys._getframe(1)
    for _ in range(8):
        if frame is None:
            break
        repo = frame.f_locals.get("custom_generate")
        if isinstance(repo, str):
            return repo
        frame = frame.f_back
    raise RuntimeError("Could not find the reward-model repository: pass reward_model=<path> to generate.")


def generate(model, *args, reward_model=None, **kwargs):
    # Hub options that loaded this file load the reward model too (generate itself would reject them).
    hub = {key: kwargs.pop(key) for key in ("revision", "token", "cache_dir", "local_files_only") if key in kwargs}
    source = reward_model if reward_model is not None else _this_repo()
    if isinstance(source, str):
        source = load_reward_model(source, model.device, **hub)
    return model.generate(*args, custom_generate=reward_augmented_generate, reward_model=source, **kwargs)
