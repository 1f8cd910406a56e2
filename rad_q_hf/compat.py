"""The one place that knows about transformers' `past_key_values` → `cache` rename (5.24)."""

import inspect
from functools import cache

import torch


@cache
def _cache_kwarg_of(forward_fn) -> str:
    return "cache" if "cache" in inspect.signature(forward_fn).parameters else "past_key_values"


def cache_kwarg(model: torch.nn.Module) -> str:
    """The keyword under which `model.forward` takes a KV cache: `cache` from 5.24 on, `past_key_values` before."""
    return _cache_kwarg_of(type(model).forward)


def output_cache(outputs):
    """The cache returned by a forward, whichever name the installed transformers gives it."""
    if "cache" in outputs.keys():
        return outputs["cache"]
    return outputs.get("past_key_values")


__all__ = ["cache_kwarg", "output_cache"]
