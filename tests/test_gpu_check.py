"""benchmarks/gpu_check.py: skips clearly without CUDA, and its whole logic (bf16 and fp16
training through the Trainer, evaluation, the torchrun phase, the ViT FLOP count, the checks and
the JSON report) runs on the CPU with --cpu-dry-run."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))

import gpu_check  # noqa: E402


def test_without_cuda_it_says_skipped_and_exits_3(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    out = tmp_path / "report.json"
    assert gpu_check.main(["--json", str(out)]) == gpu_check.EXIT_SKIPPED == 3
    assert "skipped: no CUDA device is visible" in capsys.readouterr().out
    report = json.loads(out.read_text())
    assert report["status"] == "skipped" and report["phases"] == {}


def test_a_failed_phase_fails_the_check():
    good = {"steps": 4, "finite": True, "falling": True, "eval": {"finite": True}}
    report = {"phases": {"bf16": good, "fp16": {**good, "falling": False}, "torchrun": {"error": "torchrun exited 1"}}}
    checks = gpu_check.checks_of(report)
    assert checks["bf16: losses falling"] and not checks["fp16: losses falling"]
    assert not checks["torchrun: trained without error"]


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_cpu_dry_run_exercises_every_phase(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    out = tmp_path / "report.json"
    rc = gpu_check.main(["--cpu-dry-run", "--json", str(out)])
    report = json.loads(out.read_text())
    assert rc == 0, report.get("checks")
    assert report["status"] == "passed" and all(report["checks"].values())
    phases = report["phases"]
    assert phases["bf16"]["precision"] == "bf16" and phases["fp16"]["precision"] == "fp16"
    assert phases["torchrun"]["ranks"] == 2 and phases["torchrun"]["global_batch"] == 2 * phases["bf16"]["global_batch"]
    for name in ("bf16", "fp16", "torchrun"):
        assert phases[name]["steps"] == report["steps"] and phases[name]["clips_per_s"] > 0
    assert phases["bf16"]["eval"]["clips"] > 0 and 0 <= phases["bf16"]["eval"]["R@1"] <= 100
    assert report["vit"]["gflops_per_image"] > 0 and report["vit"]["share_of_peak"] is None  # no GPU peak on a CPU
