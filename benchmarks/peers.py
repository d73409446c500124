"""tfds_jax against the loaders users would pick instead, on identical data.

For the MNIST-shaped and CIFAR-shaped PNG datasets of benchmarks/datasets.py,
batch 128 and 1024, one shuffled epoch each:
  tfds_jax   next_batch / batch_at inside one jitted lax.fori_loop over the split
             loaded with tfds_jax.load (sequential reads and the limit, a gather
             through a precomputed permutation, in the same loop), and a jitted
             next_batch called once per step from Python;
  tf.data    builder.as_dataset(...).shuffle(10000).batch(B).prefetch(2) through
             tfds.as_numpy, its first epoch (decoding the same files), each batch
             put on the JAX device;
  Grain      grain.MapDataset.source(records).shuffle(seed).batch(B) over the
             same in-memory arrays, each batch put on the JAX device;
  datarax    0.1.4, in a separate environment (--datarax-python, $DATARAX_PYTHON or
             benchmarks/.datarax-venv): its MemorySource(shuffle=True) over the same
             arrays, get_batch_at inside a jitted fori_loop and the stateful
             get_batch (its TFDS loader cannot load these splits in reasonable time).
Then tf.data's epoch-boundary stall (slowest of the 5 steps around a boundary
over the median step) next to tfds_jax's. Medians over repeats, ratios within
this run; one JSON line per figure on stdout.

Run: python benchmarks/peers.py [--quick]
"""

from __future__ import annotations

import argparse
import json
import os
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

import tfds_jax  # noqa: E402

RESULTS = Path(__file__).parent / "results"


def log(msg: str) -> None:
  print(msg, file=sys.stderr, flush=True)


def tf_data_epoch(name: str, data_dir, batch_size: int, seed: int):
  """One shuffled epoch of tf.data through tfds.as_numpy, batches put on device."""
  _, tfds = tfds_jax._tfds.import_tf()  # pylint: disable=protected-access
  b = tfds.builder(name, data_dir=data_dir)
  ds = b.as_dataset(split="train", shuffle_files=False)
  ds = ds.shuffle(10_000, seed=seed).batch(batch_size).prefetch(2)
  count = 0
  for batch in tfds.as_numpy(ds):
    jax.block_until_ready(jax.device_put(batch))
    count += len(batch["label"])
  return count


class _Records:
  """A random-access view of in-memory arrays, one dict per record."""

  def __init__(self, arrays):
    self.arrays = arrays
    self.n = len(next(iter(arrays.values())))

  def __len__(self):
    return self.n

  def __getitem__(self, i):
    return {k: v[i] for k, v in self.arrays.items()}


def grain_epoch(arrays, batch_size: int, seed: int):
  import grain  # pylint: disable=import-outside-toplevel
  return drain(grain.MapDataset.source(_Records(arrays)).shuffle(seed=seed).batch(batch_size))


def drain(ds) -> int:
  """Reads every batch of a Grain MapDataset onto the JAX device; returns the records read."""
  count = 0
  for i in range(len(ds)):
    batch = ds[i]
    jax.block_until_ready(jax.device_put(batch))
    count += len(batch["label"])
  return count


def timed(fn, repeats: int) -> tuple[float, int]:
  times, count = [], 0
  for _ in range(repeats):
    t = time.perf_counter()
    count = fn()
    times.append(time.perf_counter() - t)
  return statistics.median(times), count


def datarax_python(given: str | None) -> str | None:
  """The python of a separate environment with datarax 0.1.4, if there is one."""
  candidates = [given, os.environ.get("DATARAX_PYTHON"),
                str(Path(__file__).parent / ".datarax-venv" / "bin" / "python")]
  return next((c for c in candidates if c and Path(c).exists()), None)


def datarax_rates(python: str, arrays_path: Path, batch_size: int, repeats: int) -> dict:
  out = subprocess.run([python, str(Path(__file__).parent / "datarax_child.py"), str(arrays_path),
                        str(batch_size), str(repeats)], capture_output=True, text=True,
                       env={**os.environ, "JAX_PLATFORMS": "cpu", "TF_CPP_MIN_LOG_LEVEL": "3"})
  if out.returncode:
    log(f"[peers] datarax failed, left out:\n{out.stderr[-2000:]}")
    return {}
  return json.loads(out.stdout.strip().splitlines()[-1])


def throughput(name: str, data_dir, batch_sizes, repeats: int, seed: int = 0,
               datarax: str | None = None) -> list[dict]:
  source = tfds_jax.load(name, "train", data_dir=data_dir)
  n = source.num_records
  host = {k: np.asarray(v) for k, v in source.data.items()}
  arrays_path = Path(data_dir) / f"{name}_train_arrays.npz"
  if datarax and not arrays_path.exists():
    np.savez(arrays_path, **host)
  rows = []
  for b in batch_sizes:
    steps = n // b  # one epoch of full batches
    log(f"[peers] {name} B={b}: tfds_jax, limit ({steps} steps)")
    limit, nb_loop, ba_loop = core.fori_loops(b, steps)
    order = core.precomputed_order(n, seed, steps * b)
    shuffled = tfds_jax.init(source, seed=seed, shuffle=True)

    def per_step():
      state, out = shuffled, None
      for _ in range(steps):
        out, state = tfds_jax.next_batch(source, state, b)
      return out

    t = core.compare({
        "limit": lambda: limit(source.data, order),
        "next_batch": lambda: nb_loop(source, shuffled),
        "batch_at": lambda: ba_loop(source.data, shuffled.seed),
        "sequential": lambda: nb_loop(source, tfds_jax.init(source)),
        "next_batch_per_step": per_step,
    }, repeats)
    log(f"[peers] {name} B={b}: tf.data (decodes from disk, first epoch)")
    t_tf, n_tf = timed(lambda: tf_data_epoch(name, data_dir, b, seed), max(1, repeats // 2))
    log(f"[peers] {name} B={b}: Grain MapDataset (in memory)")
    t_grain, n_grain = timed(lambda: grain_epoch(host, b, seed), max(1, repeats // 2))
    extra = {}
    if datarax:
      log(f"[peers] {name} B={b}: datarax 0.1.4 (separate environment)")
      extra = datarax_rates(datarax, arrays_path, b, max(1, repeats // 2))
    recs = steps * b
    row = {"figure": "peers_throughput", "dataset": name, "batch_size": b,
           **{f"{k}_rps": recs / v for k, v in t.items()},
           "tf_data_rps": n_tf / t_tf, "grain_rps": n_grain / t_grain, **extra}
    row["next_batch_vs_limit"] = row["next_batch_rps"] / row["limit_rps"]
    row["next_batch_vs_tf_data"] = row["next_batch_rps"] / row["tf_data_rps"]
    row["next_batch_vs_grain"] = row["next_batch_rps"] / row["grain_rps"]
    row["per_step_vs_tf_data"] = row["next_batch_per_step_rps"] / row["tf_data_rps"]
    row["per_step_vs_grain"] = row["next_batch_per_step_rps"] / row["grain_rps"]
    if extra:
      row["batch_at_vs_datarax_batch_at"] = row["batch_at_rps"] / row["datarax_batch_at_fori_rps"]
      row["per_step_vs_datarax_get_batch"] = row["next_batch_per_step_rps"] / row["datarax_get_batch_rps"]
    print(json.dumps(row), flush=True)
    rows.append(row)
  return rows


def tf_data_stall(name: str, data_dir, batch_size: int, epochs: int = 3, seed: int = 0) -> dict:
  """Per-step times of tf.data (shuffle(10000).batch.prefetch(2), repeated) around epoch ends."""
  _, tfds = tfds_jax._tfds.import_tf()  # pylint: disable=protected-access
  b = tfds.builder(name, data_dir=data_dir)
  n = b.info.splits["train"].num_examples
  ds = b.as_dataset(split="train", shuffle_files=False).shuffle(10_000, seed=seed)
  ds = ds.batch(batch_size, drop_remainder=True).repeat(epochs).prefetch(2)
  steps_per_epoch = n // batch_size
  log(f"[peers] {name}: tf.data stall over {epochs} epochs")
  times = []
  it = iter(tfds.as_numpy(ds))
  for _ in range(epochs * steps_per_epoch):
    t = time.perf_counter()
    jax.block_until_ready(jax.device_put(next(it)))
    times.append(time.perf_counter() - t)
  boundaries = [e * steps_per_epoch for e in range(1, epochs)]
  med = statistics.median(times)
  worst = max(max(times[max(0, s - 2):s + 3]) for s in boundaries)
  row = {"figure": "peers_stall", "loader": "tf.data", "dataset": name, "batch_size": batch_size,
         "median_step_s": med, "worst_boundary_step_s": worst, "boundary_over_median": worst / med}
  print(json.dumps(row), flush=True)
  return row


def main(argv=None) -> dict:
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--quick", action="store_true", help="MNIST-shaped only, fewer repeats")
  parser.add_argument("--datarax-python", default=None, help="python of an environment with datarax 0.1.4")
  args = parser.parse_args(argv)
  datarax = datarax_python(args.datarax_python)
  log(f"[peers] datarax: {datarax or 'not installed, left out'}")
  names = ("bench_mnist",) if args.quick else ("bench_mnist", "bench_cifar")
  repeats = 3 if args.quick else 5
  data_dir = datasets.prepare(names)
  results = {"machine": core.machine(), "throughput": [], "stall": []}
  for name in names:
    results["throughput"] += throughput(name, data_dir, (128, 1024), repeats, datarax=datarax)
    results["stall"].append(tf_data_stall(name, data_dir, 128))
    loaded = tfds_jax.load(name, "train", data_dir=data_dir)
    ours = core.stall(f"{name} (tfds_jax)", loaded.data, 128)
    results["stall"].append({**ours, "loader": "tfds_jax", "dataset": name})
  RESULTS.mkdir(exist_ok=True)
  (RESULTS / "peers.json").write_text(json.dumps(results, indent=1))
  plot(results, RESULTS / "peers.png")
  log(f"[peers] wrote {RESULTS / 'peers.json'} and {RESULTS / 'peers.png'}")
  return results


def plot(results: dict, path: Path) -> None:
  import matplotlib  # pylint: disable=import-outside-toplevel
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel
  rows = results["throughput"]
  fig, (a, b) = plt.subplots(1, 2, figsize=(13, 4.5), gridspec_kw={"width_ratios": [2, 1]})
  keys = [("limit_rps", "limit (fori)"), ("next_batch_rps", "tfds_jax next_batch (fori)"),
          ("batch_at_rps", "tfds_jax batch_at (fori)"), ("next_batch_per_step_rps", "tfds_jax per-step jit"),
          ("tf_data_rps", "tf.data (first epoch)"), ("grain_rps", "Grain MapDataset"),
          ("datarax_batch_at_fori_rps", "datarax get_batch_at (fori)"), ("datarax_get_batch_rps", "datarax get_batch")]
  keys = [(k, label) for k, label in keys if all(k in r for r in rows)]
  width = 0.8 / len(keys)
  for i, (key, label) in enumerate(keys):
    a.bar(np.arange(len(rows)) + i * width, [r[key] for r in rows], width, label=label)
  a.set_yscale("log")
  a.set_xticks(np.arange(len(rows)) + 0.4 - width / 2, [f"{r['dataset']}\nB={r['batch_size']}" for r in rows])
  a.set_ylabel("records / s (log)")
  a.set_title("Shuffled epoch, identical data")
  a.legend(fontsize=7, ncol=4, loc="upper center", bbox_to_anchor=(0.5, -0.15))
  stalls = results["stall"]
  b.bar([f"{s['loader']}\n{s['dataset']}" for s in stalls], [s["boundary_over_median"] for s in stalls],
        color=["C4" if s["loader"] == "tf.data" else "C1" for s in stalls])
  b.axhline(1.5, color="red", linestyle="--", linewidth=1, label="1.5x")
  b.set_yscale("log")
  b.set_ylim(bottom=1.0)
  b.set_ylabel("worst step near an epoch boundary / median step")
  b.set_title("Epoch-boundary stall (B=128)")
  b.tick_params(axis="x", labelsize=7)
  b.legend()
  fig.suptitle(results["machine"], fontsize=8)
  fig.tight_layout()
  fig.savefig(path, dpi=110)


if __name__ == "__main__":
  main()
