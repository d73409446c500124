"""Training inside one jitted lax.fori_loop against a Python loop of jitted steps.

The demo's MLP (784-256-256-10, adam) on the MNIST-shaped set loaded with
tfds_jax.load, one shuffled epoch per measurement, batch 32 and 128:
  fori     tfds_jax's demo train_epoch: every step (next_batch, forward,
           backward, adam update) inside one jitted lax.fori_loop;
  python   the same jitted function run for one step at a time from a Python
           loop (the same work per step, one dispatch per batch).
Medians over interleaved repeats, after compilation; one JSON line per figure.

Run: python benchmarks/training.py [--quick]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import jax
import optax

sys.path.insert(0, str(Path(__file__).parent.parent))
from benchmarks import core  # noqa: E402
from benchmarks import datasets  # noqa: E402

import tfds_jax  # noqa: E402
from tfds_jax import _demo  # noqa: E402

RESULTS = Path(__file__).parent / "results"
KEYS = ("image", "label")


def fresh_state(source, seed: int = 0) -> _demo.TrainState:
  params = _demo.mlp_init(jax.random.key(seed), [28 * 28, 256, 256, 10])
  return _demo.TrainState(params, OPTIMIZER.init(params), tfds_jax.init(source, seed=seed, shuffle=True))


OPTIMIZER = optax.adam(1e-3)


def epoch_fori(source, batch_size: int) -> float:
  state = fresh_state(source)
  steps = source.num_records // batch_size
  start = time.perf_counter()
  state, loss = _demo.train_epoch(state, source, OPTIMIZER, KEYS, batch_size, steps)
  jax.block_until_ready(loss)
  return time.perf_counter() - start


def epoch_python(source, batch_size: int) -> float:
  state = fresh_state(source)
  steps = source.num_records // batch_size
  start = time.perf_counter()
  for _ in range(steps):
    state, loss = _demo.train_epoch(state, source, OPTIMIZER, KEYS, batch_size, 1)
  jax.block_until_ready(loss)
  return time.perf_counter() - start


def measure(source, batch_size: int, repeats: int) -> dict:
  epoch_fori(source, batch_size)  # compile both
  epoch_python(source, batch_size)
  times = {"fori": [], "python": []}
  for r in range(repeats):
    for name, fn in (("fori", epoch_fori), ("python", epoch_python)):
      times[name].append(fn(source, batch_size))
      core.log(f"[training] B={batch_size} repeat {r + 1}/{repeats} {name}: {times[name][-1]:.2f}s per epoch")
  n = source.num_records // batch_size * batch_size
  fori, python = statistics.median(times["fori"]), statistics.median(times["python"])
  row = {"figure": "training", "dataset": "bench_mnist", "batch_size": batch_size,
         "fori_records_per_s": n / fori, "python_records_per_s": n / python,
         "fori_over_python": python / fori}
  print(json.dumps(row), flush=True)
  return row


def plot(results: dict, path: Path) -> None:
  import matplotlib  # pylint: disable=import-outside-toplevel
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel
  rows = results["rows"]
  fig, ax = plt.subplots(figsize=(6, 4))
  x = range(len(rows))
  ax.bar([i - 0.2 for i in x], [r["fori_records_per_s"] for r in rows], 0.4, label="one jitted fori_loop per epoch")
  ax.bar([i + 0.2 for i in x], [r["python_records_per_s"] for r in rows], 0.4, label="Python loop of jitted steps")
  for i, r in enumerate(rows):
    ax.text(i, r["fori_records_per_s"], f"{r['fori_over_python']:.2f}x", ha="center", va="bottom")
  ax.set_xticks(list(x), [f"B={r['batch_size']}" for r in rows])
  ax.set_ylabel("training records/s (MLP, MNIST-shaped)")
  ax.legend(fontsize=8)
  fig.suptitle(results["machine"], fontsize=8)
  fig.tight_layout()
  fig.savefig(path, dpi=120)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--quick", action="store_true", help="one repeat")
  args = parser.parse_args()
  data_dir = datasets.prepare(("bench_mnist",))
  source = tfds_jax.load("bench_mnist", "train", data_dir=data_dir)
  rows = [measure(source, b, 1 if args.quick else 3) for b in (32, 128)]
  results = {"machine": core.machine(), "rows": rows}
  RESULTS.mkdir(exist_ok=True)
  (RESULTS / "training.json").write_text(json.dumps(results, indent=1))
  plot(results, RESULTS / "training.png")
  core.log(f"[training] wrote {RESULTS / 'training.json'} and training.png")


if __name__ == "__main__":
  main()
