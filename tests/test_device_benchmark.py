"""benchmarks/device.py runs: its smoke mode on the CPU, with every figure written."""

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).parent.parent


def test_device_benchmark_smoke_run(tmp_path):
  env = {**os.environ, "BENCH_DATA_DIR": str(tmp_path / "data"), "TFDS_JAX_CACHE_DIR": str(tmp_path / "cache"),
         "JAX_PLATFORMS": "cpu", "XLA_FLAGS": ""}
  done = subprocess.run([sys.executable, "benchmarks/device.py", "--smoke", "--out", str(tmp_path / "out")],
                        cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
  assert done.returncode == 0, done.stderr[-3000:]
  results = json.loads((tmp_path / "out" / "device.json").read_text())
  assert results["smoke"] and results["platform"] == "cpu"
  assert results["load"]["records"] == 1024 and results["load"]["on_device"]
  assert results["stream"]["on_device"] and results["stream"]["records_per_s"] > 0
  assert {r["figure"] for r in results["fori"] + results["train_step"]} == {"fori", "train_step"}
  assert all(0 < r["next_batch_over_limit"] for r in results["fori"])
  memory = results["tf_memory"]
  assert memory["stats_before"] is None and memory["jax_bytes_added_by_tf"] is None  # a CPU: n/a
  assert memory["driver_bytes"] == [None, None, None] and memory["tf_visible_gpus"] == 0
  table = (tmp_path / "out" / "device.md").read_text()
  assert "smoke run" in table and "| n/a |" in table
  lines = [json.loads(line) for line in done.stdout.splitlines()]
  assert [r["figure"] for r in lines] == ["tf_memory", "load", "stream", "fori", "train_step"]
