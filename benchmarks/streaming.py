"""Streaming figures: reading and decoding from disk, against tf.data and Grain.

On the MNIST-shaped and CIFAR-shaped PNG sets of benchmarks/datasets.py, one
shuffled first epoch (no cache anywhere; the files are in the page cache for
every loader alike), batch 128 and 1024, each batch put on the JAX device:
  tfds_jax random access   tfds_jax.stream over the ArrayRecord copy (default
                           read_ahead=2, its default reader threads: 1 on 2
                           cores, plus the decoding thread), driven by next_batch;
  tfds_jax tf.data         tfds_jax.stream over the TFRecord files;
  tf.data                  builder.as_dataset(...).shuffle(10000).batch(B).prefetch(2)
                           through tfds.as_numpy (peers.py's loader);
  Grain                    grain.MapDataset.source(tfds.data_source(ArrayRecord))
                           .shuffle(seed).batch(B), its first 8,192 records.
Then the random-access stream's epoch-boundary stall (slowest of the 5 steps
around a boundary over the median step), and its peak RSS streaming one epoch
of bench_large (224x224x3 raw records) at two sizes 4x apart, each in a fresh
process. Medians over repeats (interleaved), ratios within this run; one JSON
line per figure on stdout.

Run: python benchmarks/streaming.py [--quick]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np

sys.path.insert(0, str(Path(__file__).parent.parent))
from benchmarks import core  # noqa: E402
from benchmarks import datasets  # noqa: E402
from benchmarks import peers  # noqa: E402

import tfds_jax  # noqa: E402

RESULTS = Path(__file__).parent / "results"
GRAIN_RECORDS = 8192
DEFAULT_THREADS = tfds_jax._stream.default_threads(tfds_jax._stream.RANDOM_ACCESS, 2)  # pylint: disable=protected-access
log = core.log


def stream_epoch(name: str, data_dir, batch_size: int, seed: int, **kwargs) -> int:
  """One shuffled epoch of a tfds_jax stream; returns records read."""
  with tfds_jax.stream(name, "train", data_dir=data_dir, **kwargs) as s:
    state = tfds_jax.init(s, seed=seed, shuffle=True)
    steps = s.num_records // batch_size
    for _ in range(steps):
      batch, state = tfds_jax.next_batch(s, state, batch_size)
      jax.block_until_ready(batch)
  return steps * batch_size


def grain_records(name: str, data_dir, batch_size: int, seed: int) -> int:
  """Grain's MapDataset over the ArrayRecord files (TFDS's data source), first records."""
  import grain  # pylint: disable=import-outside-toplevel
  _, tfds = tfds_jax._tfds.import_tf()  # pylint: disable=protected-access
  source = tfds.data_source(name, split="train", data_dir=data_dir)
  ds = grain.MapDataset.source(source).shuffle(seed=seed).batch(batch_size)
  count = 0
  for i in range(GRAIN_RECORDS // batch_size):
    batch = ds[i]
    jax.block_until_ready(jax.device_put(batch))
    count += len(batch["label"])
  return count


def throughput(name: str, batch_sizes, repeats: int, seed: int = 42) -> list[dict]:
  tfrecord, array_record = datasets.DATA_DIR, datasets.DATA_DIR / "array_record"
  rows = []
  for batch_size in batch_sizes:
    loaders = {
        "tfds_jax random access": lambda: stream_epoch(name, array_record, batch_size, seed),
        "tfds_jax tf.data stream": lambda: stream_epoch(name, tfrecord, batch_size, seed),
        "tf.data": lambda: peers.tf_data_epoch(name, tfrecord, batch_size, seed),
        "Grain (ArrayRecord)": lambda: grain_records(name, array_record, batch_size, seed),
    }
    times = {k: [] for k in loaders}
    counts = {}
    for r in range(repeats):  # interleaved, so drift hits every loader alike
      for k, fn in loaders.items():
        start = time.perf_counter()
        counts[k] = fn()
        times[k].append(time.perf_counter() - start)
        log(f"[streaming] {name} B={batch_size} repeat {r + 1}/{repeats} {k}:"
            f" {counts[k] / times[k][-1]:,.0f} records/s")
    rates = {k: counts[k] / statistics.median(times[k]) for k in loaders}
    row = {"figure": "streaming_throughput", "dataset": name, "batch_size": batch_size,
           "records_per_s": rates, "threads": DEFAULT_THREADS, "read_ahead": 2,
           "ratio_vs_tf_data": rates["tfds_jax random access"] / rates["tf.data"],
           "ratio_vs_grain": rates["tfds_jax random access"] / rates["Grain (ArrayRecord)"]}
    print(json.dumps(row), flush=True)
    rows.append(row)
  return rows


def stall(name: str, batch_size: int, num_threads: int | None = None, epochs: int = 3, seed: int = 42) -> dict:
  """Per-step times of a random-access stream across epoch boundaries.

  Next to the boundary figure, the same statistic for every 5-step window
  (its median) shows the step-to-step jitter of a loader that runs flat out.
  """
  with tfds_jax.stream(name, "train", data_dir=datasets.DATA_DIR / "array_record",
                       num_threads=num_threads) as s:
    state = tfds_jax.init(s, seed=seed, shuffle=True)
    steps = epochs * s.num_records // batch_size
    times = []
    for _ in range(steps):
      start = time.perf_counter()
      batch, state = tfds_jax.next_batch(s, state, batch_size)
      jax.block_until_ready(batch)
      times.append(time.perf_counter() - start)
    n = s.num_records
  times = np.asarray(times)
  med = float(np.median(times[5:]))  # past the first batches (nothing read ahead yet)
  boundaries = [e * n // batch_size for e in range(1, epochs)]  # the step that crosses epoch e
  around = [float(times[b - 2:b + 3].max()) / med for b in boundaries]
  windows = [float(times[i:i + 5].max()) / med for i in range(5, len(times) - 5)]
  row = {"figure": "streaming_stall", "dataset": name, "batch_size": batch_size,
         "num_threads": num_threads or DEFAULT_THREADS, "median_step_s": med,
         "worst_boundary_over_median": max(around), "boundaries_over_median": around,
         "any_5_steps_over_median": float(np.median(windows))}
  print(json.dumps(row), flush=True)
  return row


def _peak_rss() -> int:
  """This process's peak resident bytes (``ru_maxrss`` would count the parent's, via vfork)."""
  with open("/proc/self/status") as f:
    return next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmHWM"))


def memory_child(split: str, batch_size: int) -> None:
  """In a fresh process: peak RSS while streaming one epoch of bench_large[split]."""
  datasets.builders()
  with tfds_jax.stream("bench_large", split, data_dir=datasets.DATA_DIR / "array_record") as s:
    state = tfds_jax.init(s, seed=0, shuffle=True)
    batch, state = tfds_jax.next_batch(s, state, batch_size)
    jax.block_until_ready(batch)
    before = _peak_rss()
    for _ in range(s.num_records // batch_size - 1):
      batch, state = tfds_jax.next_batch(s, state, batch_size)
      jax.block_until_ready(batch)
    peak = _peak_rss()
    nbytes = s.num_records * 224 * 224 * 3
  print(json.dumps({"split": split, "records": s.num_records, "decoded_bytes": nbytes,
                    "peak_rss_after_first_batch": before, "peak_rss": peak}))


def memory(batch_size: int = 64) -> list[dict]:
  datasets.prepare(("bench_large",), file_format="array_record")
  rows = []
  for split in ("train[:25%]", "train"):
    log(f"[streaming] peak RSS streaming bench_large[{split}] in a fresh process ...")
    out = subprocess.run([sys.executable, __file__, "--memory-child", split, str(batch_size)],
                         capture_output=True, text=True, check=True)
    row = {"figure": "streaming_memory", "batch_size": batch_size, **json.loads(out.stdout.strip().splitlines()[-1])}
    print(json.dumps(row), flush=True)
    rows.append(row)
  rows[1]["peak_over_smaller"] = rows[1]["peak_rss"] / rows[0]["peak_rss"]
  return rows


def plot(results: dict, path: Path) -> None:
  import matplotlib  # pylint: disable=import-outside-toplevel
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel
  rows = results["throughput"]
  fig, axes = plt.subplots(1, 2, figsize=(12, 4.2))
  names = list(rows[0]["records_per_s"])
  labels = [f"{r['dataset'].split()[0]}\nB={r['batch_size']}" for r in rows]
  width = 0.8 / len(names)
  for i, k in enumerate(names):
    axes[0].bar(np.arange(len(rows)) + i * width, [r["records_per_s"][k] for r in rows], width, label=k)
  axes[0].set_xticks(np.arange(len(rows)) + width * (len(names) - 1) / 2, labels)
  axes[0].set_ylabel("records/s (first epoch, from disk)")
  axes[0].set_yscale("log")
  axes[0].legend(fontsize=8)
  axes[0].set_title("Streaming throughput (higher is better)")
  mem = results["memory"]
  axes[1].bar([f"{m['split']}\n{m['decoded_bytes'] / 2**30:.2f} GiB decoded" for m in mem],
              [m["peak_rss"] / 2**20 for m in mem], color="tab:green")
  axes[1].set_ylabel("peak RSS (MiB)")
  axes[1].set_title("Peak memory streaming one epoch of bench_large")
  fig.suptitle(results["machine"], fontsize=8)
  fig.tight_layout()
  fig.savefig(path, dpi=120)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--quick", action="store_true", help="one repeat, MNIST only, B=1024")
  parser.add_argument("--memory-child", nargs=2, metavar=("SPLIT", "BATCH"), help=argparse.SUPPRESS)
  args = parser.parse_args()
  if args.memory_child:
    memory_child(args.memory_child[0], int(args.memory_child[1]))
    return
  datasets.prepare(("bench_mnist", "bench_cifar"))
  datasets.prepare(("bench_mnist", "bench_cifar"), file_format="array_record")
  tfds_jax._tfds.import_tf()  # pylint: disable=protected-access  # no loader pays TF's import
  repeats = 1 if args.quick else 5
  results = {"machine": core.machine(), "throughput": [], "stall": [], "memory": []}
  for name in ("bench_mnist",) if args.quick else ("bench_mnist", "bench_cifar"):
    results["throughput"] += throughput(name, (1024,) if args.quick else (128, 1024), repeats)
  for threads in (None, 3):  # the default, and three reader threads (as many as can be in flight)
    results["stall"].append(stall("bench_mnist", 128, threads))
    results["stall"].append(stall("bench_cifar", 1024, threads))
  results["memory"] = memory()
  RESULTS.mkdir(exist_ok=True)
  (RESULTS / "streaming.json").write_text(json.dumps(results, indent=1))
  plot(results, RESULTS / "streaming.png")
  log(f"[streaming] wrote {RESULTS / 'streaming.json'} and streaming.png")


if __name__ == "__main__":
  main()
