"""Load time and peak memory of tfds_jax.load against tfds.as_numpy(batch_size=-1).

Every measurement runs in a fresh process on the same prepared files (the
MNIST-shaped 60,000-record PNG split of benchmarks/datasets.py):
  as_numpy        tfds.as_numpy(builder.as_dataset("train", batch_size=-1))
  load_nocache    tfds_jax.load(..., cache=False)
  load_first      tfds_jax.load(...) with an empty cache (decodes, writes the cache)
  load_cached     tfds_jax.load(...) in a new process with the cache written
Times cover the load call alone; TensorFlow is imported beforehand where the
call needs it (the cached load does not, and that process never imports it).
Peak memory is the process's peak RSS minus its RSS just before the call,
against the size of the final arrays; "net" also subtracts TensorFlow's fixed
cost of any read (the peak of reading 100 records), which the cached load does
not pay. Medians over repeats.

Run: python benchmarks/load.py [--repeats N] [--dataset bench_mnist]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path


HERE = Path(__file__).parent
RESULTS = HERE / "results"

CHILD = r"""
import json, os, sys, time
sys.path.insert(0, {root!r})
mode, name, data_dir = sys.argv[1:4]

def rss(field="VmRSS"):  # VmHWM: this process's peak (ru_maxrss would include the parent's, via vfork)
    with open("/proc/self/status") as f:
        return next(int(l.split()[1]) * 1024 for l in f if l.startswith(field))

if mode != "load_cached":
    import tensorflow as tf
    tf.config.set_visible_devices([], "GPU")
    import tensorflow_datasets as tfds
    from benchmarks import datasets
    datasets.builders()
if mode != "as_numpy":
    import jax, tfds_jax
    jax.devices()
before = rss()
start = time.perf_counter()
if mode == "tf_fixed":  # TF's fixed cost of any read: 100 records
    b = tfds.builder(name, data_dir=data_dir)
    arrays = tfds.as_numpy(b.as_dataset(split="train[:100]", batch_size=-1, shuffle_files=False))
    nbytes = sum(v.nbytes for v in arrays.values())
elif mode == "as_numpy":
    b = tfds.builder(name, data_dir=data_dir)
    arrays = tfds.as_numpy(b.as_dataset(split="train", batch_size=-1, shuffle_files=False))
    nbytes = sum(v.nbytes for v in arrays.values())
else:
    src = tfds_jax.load(name, "train", data_dir=data_dir, cache=(mode != "load_nocache"))
    jax.block_until_ready(src.data)
    nbytes = sum(v.nbytes for v in src.data.values())
seconds = time.perf_counter() - start
peak = rss("VmHWM")
print(json.dumps({{"mode": mode, "seconds": seconds, "peak_extra_bytes": peak - before,
                  "array_bytes": nbytes, "tensorflow_imported": "tensorflow" in sys.modules}}))
"""


def run_child(mode: str, name: str, data_dir: Path, cache_dir: Path) -> dict:
  env = {**os.environ, "TFDS_JAX_CACHE_DIR": str(cache_dir), "JAX_PLATFORMS": "cpu",
         "TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONPATH": str(HERE.parent)}
  out = subprocess.run([sys.executable, "-c", CHILD.format(root=str(HERE.parent)), mode, name, str(data_dir)],
                       env=env, capture_output=True, text=True)
  if out.returncode:
    raise RuntimeError(f"{mode} failed:\n{out.stderr[-3000:]}")
  return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--repeats", type=int, default=3)
  parser.add_argument("--dataset", default="bench_mnist", choices=["bench_mnist", "bench_cifar"])
  args = parser.parse_args()
  sys.path.insert(0, str(HERE.parent))
  from benchmarks import datasets  # pylint: disable=import-outside-toplevel
  data_dir = datasets.prepare((args.dataset,))
  runs = {m: [] for m in ("tf_fixed", "as_numpy", "load_nocache", "load_first", "load_cached")}
  for r in range(args.repeats):
    cache_dir = Path(tempfile.mkdtemp(prefix="tfds_jax_bench_cache_"))
    try:
      for mode in runs:  # load_first fills cache_dir; load_cached then reads it
        print(f"[load] repeat {r + 1}/{args.repeats}: {mode}", file=sys.stderr, flush=True)
        runs[mode].append(run_child(mode, args.dataset, data_dir, cache_dir))
    finally:
      shutil.rmtree(cache_dir, ignore_errors=True)
  med = {m: {k: statistics.median(x[k] for x in rs) for k in ("seconds", "peak_extra_bytes", "array_bytes")}
         for m, rs in runs.items()}
  base = med["as_numpy"]["seconds"]
  fixed = med.pop("tf_fixed")["peak_extra_bytes"]
  rows = []
  for mode, m in med.items():
    row = {"figure": "load", "dataset": args.dataset, "mode": mode, "seconds": m["seconds"],
           "vs_as_numpy": m["seconds"] / base, "peak_extra_mb": m["peak_extra_bytes"] / 2**20,
           "array_mb": m["array_bytes"] / 2**20, "peak_over_arrays": m["peak_extra_bytes"] / m["array_bytes"],
           "peak_over_arrays_net_of_tf_fixed": (m["peak_extra_bytes"] - (fixed if mode != "load_cached" else 0)) / m["array_bytes"],
           "tf_fixed_mb": fixed / 2**20,
           "tensorflow_imported": runs[mode][-1]["tensorflow_imported"]}
    rows.append(row)
    print(json.dumps(row), flush=True)
  speedup = {"figure": "cached_reload_speedup", "dataset": args.dataset,
             "first_over_cached": med["load_first"]["seconds"] / med["load_cached"]["seconds"],
             "nocache_over_cached": med["load_nocache"]["seconds"] / med["load_cached"]["seconds"]}
  print(json.dumps(speedup), flush=True)
  RESULTS.mkdir(exist_ok=True)
  (RESULTS / f"load_{args.dataset}.json").write_text(json.dumps({"rows": rows, "speedup": speedup, "runs": runs}, indent=1))
  plot(rows, RESULTS / f"load_{args.dataset}.png")


def plot(rows, path: Path) -> None:
  import matplotlib  # pylint: disable=import-outside-toplevel
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel
  fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4))
  names = [r["mode"] for r in rows]
  a.bar(names, [r["seconds"] for r in rows], color=["grey", "C0", "C1", "C2"])
  a.set_ylabel("seconds (load call)")
  a.set_title(f"Load time, {rows[0]['dataset']} train")
  for i, r in enumerate(rows):
    a.text(i, r["seconds"], f"{r['seconds']:.2f}s", ha="center", va="bottom", fontsize=8)
  b.bar(names, [r["peak_over_arrays"] for r in rows], color=["grey", "C0", "C1", "C2"])
  b.axhline(2.0, color="red", linestyle="--", linewidth=1, label="2x target")
  b.set_ylabel("peak extra RSS / final array bytes")
  b.set_title("Peak memory during the load")
  b.legend()
  for ax in (a, b):
    ax.tick_params(axis="x", labelsize=8)
  fig.tight_layout()
  fig.savefig(path, dpi=110)


if __name__ == "__main__":
  main()
