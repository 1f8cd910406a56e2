"""The GPU check script cannot rot: it runs here in its --quick CPU form, and what it needs imports without `datasets`."""

import json
import os
import subprocess
import sys
from pathlib import Path

from test_tokenizer_bridge import CORPUS, byte_level_bpe, sentencepiece_style

ROOT = Path(__file__).resolve().parent.parent


def test_gpu_check_quick_runs_every_step_on_the_cpu(tmp_path):
    # The cross-tokenizer pair reads its tokenizers from folders named as the real ones: tiny ones that disagree.
    sentencepiece_style(CORPUS, 140).save_pretrained(tmp_path / "tok" / "gemma3-270m")
    byte_level_bpe(CORPUS, 400).save_pretrained(tmp_path / "tok" / "smollm2-135m")
    cmd = [sys.executable, "benchmarks/gpu_check.py", "--quick", "--output_dir", str(tmp_path)]
    cmd += ["--tokenizers_dir", str(tmp_path / "tok")]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=900, env=env)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = json.loads((tmp_path / "gpu_check.json").read_text())
    assert report["errors"] == [] and report["skipped"] == []
    assert report["tests"]["returncode"] == 0 and "passed" in report["tests"]["summary"]
    assert "passed" in (tmp_path / "pytest.log").read_text()
    timed = {(r["batch"], r["method"]) for r in report["decode"] if r["pair"] == "quick" and r["method"] != "forwards"}
    methods = ("unguided", "rad_q", "rad_v", "rad_q_trunk_b0", "rad_q_trunk_b1")
    assert timed == {(b, m) for b in (1, 2) for m in methods} | {(1, "rad_v_naive")}
    cross = {(r["batch"], r["method"]) for r in report["decode"] if r["pair"] == "quick_cross" and "ratio" in r}
    assert cross == {(b, m) for b in (1, 2) for m in ("unguided", "rad_q_cross", "rad_v_cross")}
    trunk = [r for r in report["decode"] if r["method"].startswith("rad_q_trunk")]
    assert all(r["floor"] == 1.0 for r in trunk if r["method"].endswith("b0")) and all(
        r["floor"] > 1 for r in trunk if r["method"].endswith("b1")
    )
    assert all(r["ms_per_token"] > 0 for r in report["decode"] if "ms_per_token" in r)
    assert len(report["train"]) == 5 and all(r["tokens_per_s"] > 0 for r in report["train"].values())
    table = (tmp_path / "gpu_check.md").read_text()
    assert "## Goals" in table and "| quick | 2 | rad_v |" in table and "## Training speed" in table
    assert "quick_cross: RAD-V ÷ RAD-Q time B=1" in table
    profile = (tmp_path / "profile_cpu_quick_cross.md").read_text()
    assert all(f"## B = 1, {m}" in profile for m in ("unguided", "rad_q_cross", "rad_v_cross")), profile[:2000]
    assert "ms/token" in profile and "tottime" in profile and "Self CPU" in profile


def test_decoding_and_training_code_import_without_datasets():
    """The GPU machine has no `datasets`: only loading data may need it."""
    # A None entry in sys.modules makes `import datasets` fail and find_spec report it missing, as if uninstalled.
    code = "import sys; sys.modules['datasets'] = None; import rad_q_hf, rad_q_hf.decoding, rad_q_hf.training"
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
