"""bench/gpu_check.py runs end to end (on the CPU here) on hub-layout checkpoints."""

from __future__ import annotations

import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _gpu_check():
    spec = importlib.util.spec_from_file_location("gpu_check", ROOT / "bench" / "gpu_check.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_gpu_check_loads_answers_trains_and_prints_figures(hub, capsys):
    args = ["--paths-file", str(hub["paper_paths"]), "--device", "cpu", "--dtype", "bfloat16"]
    assert _gpu_check().main([*args, "--questions", "2", "--steps", "2", "--threads", "1"]) == 0
    out = capsys.readouterr().out
    assert "as torch.bfloat16" in out and "1817 image tokens per frame" in out
    assert "latency p50" in out and "prompt tokens/s" in out
    assert "stage-2 training, 2 steps" in out and "peak memory" in out


def test_gpu_check_reports_a_missing_paths_file(tmp_path, capsys):
    missing = str(tmp_path / "nope.yaml")
    assert _gpu_check().main(["--paths-file", missing, "--device", "cpu", "--steps", "0"]) == 1
    assert "nope.yaml does not exist" in capsys.readouterr().err
