"""The one benchmark command: builds the data, runs every figure, writes the report.

1. builds the MNIST-shaped and CIFAR-shaped PNG datasets (TFRecord, and an
   ArrayRecord copy for the streaming figures) under benchmarks/data, once;
2. creates benchmarks/.datarax-venv with datarax 0.1.4 for the peer comparison,
   once (skip with --no-datarax);
3. runs core.py, load.py (both datasets), peers.py, streaming.py (which
   also builds bench_large, 1.9 GB, once), training.py, pipeline.py and
   features.py (which builds bench_varimages and bench_objects once), each
   writing JSON and a plot under benchmarks/results;
4. writes BENCHMARKS.md (report.py).

Run: python benchmarks/run_all.py [--quick] [--no-datarax]
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).parent
DATARAX_VENV = HERE / ".datarax-venv"


def step(msg: str) -> None:
  print(f"\n=== {msg}", file=sys.stderr, flush=True)


def run(*args: str) -> None:
  start = time.perf_counter()
  subprocess.run([sys.executable, *args], check=True, cwd=HERE.parent)
  print(f"    ({time.perf_counter() - start:.0f}s)", file=sys.stderr, flush=True)


def ensure_datarax() -> bool:
  python = DATARAX_VENV / "bin" / "python"
  if python.exists():
    return True
  step("creating benchmarks/.datarax-venv with datarax 0.1.4 (peer comparison only)")
  uv = [os.environ["UV"]] if os.environ.get("UV") else (
      [shutil.which("uv")] if shutil.which("uv") else ["python3", "-m", "uv"])
  try:
    subprocess.run([*uv, "venv", "-q", str(DATARAX_VENV)], check=True)
    subprocess.run([*uv, "pip", "install", "-q", "-p", str(python), "datarax==0.1.4"], check=True)
    return True
  except (subprocess.CalledProcessError, FileNotFoundError) as e:
    print(f"    datarax could not be installed ({e}); it is left out of the comparison.", file=sys.stderr)
    return False


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--quick", action="store_true", help="fewer repeats and sizes (smoke run)")
  parser.add_argument("--no-datarax", action="store_true", help="leave datarax out")
  args = parser.parse_args()
  quick = ["--quick"] if args.quick else []
  step("building the benchmark datasets (once)")
  sys.path.insert(0, str(HERE.parent))
  from benchmarks import datasets  # pylint: disable=import-outside-toplevel
  datasets.prepare(("bench_mnist", "bench_cifar"))
  datasets.prepare(("bench_mnist", "bench_cifar"), file_format="array_record")
  datarax = [] if args.no_datarax or not ensure_datarax() else ["--datarax-python", str(DATARAX_VENV / "bin" / "python")]
  step("figures 1-3: throughput, stall, batch_at scaling (core.py)")
  run("benchmarks/core.py", *quick)
  for name in ("bench_mnist",) if args.quick else ("bench_mnist", "bench_cifar"):
    step(f"figure 4: load time and memory, {name} (load.py)")
    run("benchmarks/load.py", "--dataset", name, "--repeats", "1" if args.quick else "3")
  step("figure 5: against tf.data, Grain and datarax (peers.py)")
  run("benchmarks/peers.py", *quick, *([] if not datarax else datarax))
  step("figure 6: streaming from disk against tf.data and Grain, stall, memory (streaming.py)")
  run("benchmarks/streaming.py", *quick)
  step("figure 7: training with the epoch drivers against a Python loop (training.py)")
  run("benchmarks/training.py", *quick)
  step("figure 8: augmentation pipeline throughput against tf.data and Grain (pipeline.py)")
  run("benchmarks/pipeline.py", *quick)
  step("figure 9: real datasets in static shapes against tf.data (features.py; builds bench_varimages and bench_objects once)")
  run("benchmarks/features.py", *quick)
  step("writing BENCHMARKS.md")
  run("benchmarks/report.py")


if __name__ == "__main__":
  main()
