"""Benchmarks of the functional core (in-memory arrays), ratios measured in one run.

Figures (one JSON line each on stdout; all of them in benchmarks/results/core.json,
plots in benchmarks/results/core.png):
  throughput  records/s of shuffled next_batch / batch_at / sequential reads inside one
              jitted lax.fori_loop, against the limit: a gather through a precomputed
              permutation in the same loop; and per-step jitted calls from Python,
              against the same gather called per step, its position either passed
              from Python (calls independent, free to overlap) or carried on the
              device from call to call (serialized, as next_batch's state is), or
              made to run the way next_batch's program runs on XLA:CPU (below).
  stall       per-step time around epoch boundaries / median step time.
  batch_at_n  batch_at cost per record as the dataset grows from 1e3 to 1e7 records.

Every loop consumes each batch the same way (a uint32 sum of all of it), and the
limit gathers rows with the same flat-row gather tfds_jax uses, so the work
compared differs only in how the batch's records are chosen.

Run: python benchmarks/core.py [--quick]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

import tfds_jax
from tfds_jax._source import take_rows  # the limit gathers the way tfds_jax does

RESULTS = Path(__file__).parent / "results"


def log(msg: str) -> None:
  print(msg, file=sys.stderr, flush=True)


def compare(fns: dict, repeats: int) -> dict[str, float]:
  """Median seconds per call of each fn, the fns interleaved in every repeat so
  that machine noise falls on all of them alike."""
  for fn in fns.values():
    jax.block_until_ready(fn())  # compile and warm up
  times = {name: [] for name in fns}
  for r in range(repeats):
    names = list(fns)[r % len(fns):] + list(fns)[:r % len(fns)]
    for name in names:
      t = time.perf_counter()
      jax.block_until_ready(fns[name]())
      times[name].append(time.perf_counter() - t)
  return {name: statistics.median(ts) for name, ts in times.items()}


def checksum(batch) -> jax.Array:
  return sum(jnp.sum(v, dtype=jnp.uint32) for v in jax.tree.leaves(batch))


def machine() -> str:
  """One line naming the machine, for tables and plots."""
  return f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, jax {jax.__version__} on {jax.default_backend()}"


def estimated_flops(fn, *args, **kwargs) -> float:
  """XLA's cost estimate (HloCostAnalysis flops) of jitted ``fn``'s program:
  XLA:CPU runs a program on the calling thread below 1,000, else on a worker."""
  cost = fn.lower(*args, **kwargs).compile().cost_analysis()
  return float((cost[0] if isinstance(cost, (list, tuple)) else cost)["flops"])


def make_arrays(n: int, shape: tuple[int, ...], seed: int = 0) -> dict[str, np.ndarray]:
  rng = np.random.default_rng(seed)
  return {"image": rng.integers(0, 256, (n, *shape), dtype=np.uint8),
          "label": rng.integers(0, 10, (n,), dtype=np.int32)}


def precomputed_order(n: int, seed: int, length: int) -> jax.Array:
  """The shuffled order for `length` positions, materialized (the 'limit' input)."""
  epochs = -(-length // n)
  idx = jnp.arange(n, dtype=jnp.uint32)
  perms = [tfds_jax.index_shuffle(idx, (seed + e) % 2**32, n - 1) for e in range(epochs)]
  return jnp.concatenate(perms)[:length].astype(jnp.int32)


def fori_loops(batch_size: int, steps: int):
  """Jitted loops, each reading `steps` batches and returning a checksum."""

  @jax.jit
  def limit(data, order):
    def body(i, acc):
      rows = jax.lax.dynamic_slice(order, (i * batch_size,), (batch_size,))
      return acc + checksum({k: take_rows(v, rows) for k, v in data.items()})
    return jax.lax.fori_loop(0, steps, body, jnp.uint32(0))

  @jax.jit
  def next_batch_loop(source, state):
    def body(_, carry):
      acc, state = carry
      batch, state = tfds_jax.next_batch(source, state, batch_size)
      return acc + checksum(batch), state
    return jax.lax.fori_loop(0, steps, body, (jnp.uint32(0), state))[0]

  @jax.jit
  def batch_at_loop(data, seed):
    def body(i, acc):
      return acc + checksum(tfds_jax.batch_at(data, i * batch_size, batch_size, seed))
    return jax.lax.fori_loop(0, steps, body, jnp.uint32(0))

  return limit, next_batch_loop, batch_at_loop


def throughput(name: str, arrays, batch_sizes, repeats: int, seed: int = 42) -> list[dict]:
  source = tfds_jax.from_arrays(arrays)
  n = source.num_records
  rows = []
  for b in batch_sizes:
    steps = max(1, (2 * n) // b)  # about two epochs, so boundaries are included
    log(f"[throughput] {name} B={b}: {steps} steps per timing")
    limit, nb_loop, ba_loop = fori_loops(b, steps)
    order = precomputed_order(n, seed, steps * b)
    shuffled = tfds_jax.init(source, seed=seed, shuffle=True)
    # Per-step jitted calls from Python: the same gather against next_batch.
    step_gather = jax.jit(lambda data, order, i: {
        k: take_rows(v, jax.lax.dynamic_slice(order, (i * b,), (b,))) for k, v in data.items()})
    steps_i = [jnp.int32(i) for i in range(steps)]

    def python_loop_limit():
      out = None
      for i in steps_i:
        out = step_gather(source.data, order, i)
      return out

    # The same gather with its position carried on the device from call to call,
    # as a training step carries its state: calls cannot overlap.
    step_gather_carried = jax.jit(lambda data, order, i: ({
        k: take_rows(v, jax.lax.dynamic_slice(order, (i * b,), (b,))) for k, v in data.items()}, i + 1))

    def python_loop_limit_carried():
      i, out = jnp.int32(0), None
      for _ in range(steps):
        out, i = step_gather_carried(source.data, order, i)
      return out

    # XLA:CPU runs a program inline on the calling thread when its estimated
    # cost is below 1,000 flops (HloCostAnalysis; a bare batch-128 gather is
    # under it) and hands it to a worker thread otherwise (next_batch: the
    # cipher's integer ops count). The same gather plus an independent output
    # of ~9,000 estimated flops (about a microsecond of real work) takes the
    # worker-thread path too: how much of the per-step gap is that hand-off.
    step_gather_worker = jax.jit(lambda data, order, i: ({
        k: take_rows(v, jax.lax.dynamic_slice(order, (i * b,), (b,))) for k, v in data.items()},
        jnp.sum(jnp.arange(4096, dtype=jnp.uint32) * i.astype(jnp.uint32))))

    def python_loop_limit_worker():
      out = None
      for i in steps_i:
        out = step_gather_worker(source.data, order, i)
      return out

    # The cheapest index computation there is (one multiply, add and modulo
    # per index, no shuffle quality): its estimated cost, for scale.
    step_gather_affine = jax.jit(lambda data, i: {
        k: take_rows(v, (jnp.arange(b, dtype=jnp.int32) + i * b) * 7919 % n) for k, v in data.items()})
    flops = {
        "gather": estimated_flops(step_gather, source.data, order, steps_i[0]),
        "gather_worker": estimated_flops(step_gather_worker, source.data, order, steps_i[0]),
        "gather_affine_index": estimated_flops(step_gather_affine, source.data, steps_i[0]),
        "next_batch": estimated_flops(jax.jit(tfds_jax.next_batch, static_argnames="batch_size"),
                                      source, shuffled, batch_size=b),
    }

    def python_loop_next_batch():
      state, out = shuffled, None
      for _ in range(steps):
        out, state = tfds_jax.next_batch(source, state, b)
      return out

    t = compare({
        "limit": lambda: limit(source.data, order),
        "next_batch": lambda: nb_loop(source, shuffled),
        "batch_at": lambda: ba_loop(source.data, shuffled.seed),
        "sequential": lambda: nb_loop(source, tfds_jax.init(source)),
        "python_limit": python_loop_limit,
        "python_limit_carried": python_loop_limit_carried,
        "python_limit_worker": python_loop_limit_worker,
        "python_next_batch": python_loop_next_batch,
    }, repeats)
    # Same records, or the comparison is meaningless.
    assert int(limit(source.data, order)) == int(nb_loop(source, shuffled)) == int(ba_loop(source.data, shuffled.seed))
    t_limit, t_nb, t_ba, t_seq = t["limit"], t["next_batch"], t["batch_at"], t["sequential"]
    t_py_limit, t_py_nb, t_py_carried = t["python_limit"], t["python_next_batch"], t["python_limit_carried"]
    recs = steps * b
    row = {
        "figure": "throughput", "dataset": name, "batch_size": b, "records": recs,
        "limit_fori_rps": recs / t_limit, "next_batch_fori_rps": recs / t_nb,
        "batch_at_fori_rps": recs / t_ba, "sequential_fori_rps": recs / t_seq,
        "limit_python_rps": recs / t_py_limit, "next_batch_python_rps": recs / t_py_nb,
        "limit_python_carried_rps": recs / t_py_carried,
        "limit_python_worker_rps": recs / t["python_limit_worker"],
        "estimated_flops": flops,
    }
    row["next_batch_fori_vs_limit"] = row["next_batch_fori_rps"] / row["limit_fori_rps"]
    row["batch_at_fori_vs_limit"] = row["batch_at_fori_rps"] / row["limit_fori_rps"]
    row["next_batch_python_vs_limit"] = row["next_batch_python_rps"] / row["limit_python_rps"]
    row["next_batch_python_vs_limit_carried"] = row["next_batch_python_rps"] / row["limit_python_carried_rps"]
    row["next_batch_python_vs_limit_worker"] = row["next_batch_python_rps"] / row["limit_python_worker_rps"]
    print(json.dumps(row), flush=True)
    rows.append(row)
  return rows


def stall(name: str, arrays, batch_size: int, epochs: int = 3, seed: int = 42) -> dict:
  """Times each jitted next_batch step (blocking) across epoch boundaries."""
  source = tfds_jax.from_arrays(arrays)
  n = source.num_records
  state = tfds_jax.init(source, seed=seed, shuffle=True)
  jax.block_until_ready(tfds_jax.next_batch(source, state, batch_size))
  steps = epochs * n // batch_size
  log(f"[stall] {name} B={batch_size}: {steps} blocking steps")
  times, boundary_steps = [], []
  for step in range(steps):
    crosses = (step * batch_size) // n != ((step + 1) * batch_size - 1) // n or (step * batch_size) % n == 0
    t = time.perf_counter()
    batch, state = tfds_jax.next_batch(source, state, batch_size)
    jax.block_until_ready(batch)
    times.append(time.perf_counter() - t)
    if crosses and step > 0:
      boundary_steps.append(step)
  med = statistics.median(times)
  worst = max(max(times[max(0, s - 2):s + 3]) for s in boundary_steps)
  row = {"figure": "stall", "dataset": name, "batch_size": batch_size, "median_step_s": med,
         "worst_boundary_step_s": worst, "boundary_over_median": worst / med,
         "boundaries": len(boundary_steps)}
  print(json.dumps(row), flush=True)
  return row


def batch_at_scaling(sizes, batch_size: int, repeats: int, seed: int = 7) -> list[dict]:
  """batch_at cost per record as the dataset grows (16-byte records)."""
  rows = []
  for n in sizes:
    log(f"[batch_at_n] n={n:.0e}")
    data = {"x": jnp.asarray(np.random.default_rng(0).integers(0, 256, (n, 16), dtype=np.uint8))}
    steps = 200
    _, _, ba_loop = fori_loops(batch_size, steps)
    t = compare({"batch_at": lambda data=data: ba_loop(data, jnp.uint32(seed))}, repeats)["batch_at"]
    row = {"figure": "batch_at_n", "num_records": n, "batch_size": batch_size,
           "ns_per_record": t / (steps * batch_size) * 1e9}
    print(json.dumps(row), flush=True)
    rows.append(row)
    del data
  base = min(r["ns_per_record"] for r in rows)
  for r in rows:
    r["over_cheapest"] = r["ns_per_record"] / base
  return rows


def plot(results: dict, path: Path) -> None:
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  fig, axes = plt.subplots(1, 2, figsize=(13, 4.5))
  rows = results["throughput"]
  labels = [f"{r['dataset'].split()[0]}\nB={r['batch_size']}" for r in rows]
  keys = [("limit_fori_rps", "limit: precomputed perm (fori)"), ("next_batch_fori_rps", "next_batch (fori)"),
          ("batch_at_fori_rps", "batch_at (fori)"), ("sequential_fori_rps", "sequential (fori)"),
          ("limit_python_rps", "limit, per-step jit"), ("limit_python_carried_rps", "limit, per-step jit, position carried"),
          ("limit_python_worker_rps", "limit, per-step jit, XLA:CPU worker thread"),
          ("next_batch_python_rps", "next_batch, per-step jit")]
  width = 0.8 / len(keys)
  for i, (key, label) in enumerate(keys):
    axes[0].bar(np.arange(len(rows)) + i * width, [r[key] / 1e3 for r in rows], width, label=label)
  axes[0].set_xticks(np.arange(len(rows)) + 0.4 - width / 2, labels)
  axes[0].set_ylabel("thousand records / s")
  axes[0].set_title("Shuffled-epoch throughput (higher is better)")
  axes[0].set_ylim(0, 1.45 * max(r[k] for r in rows for k, _ in keys) / 1e3)  # room for the legend
  axes[0].legend(fontsize=7, ncol=2, loc="upper left")
  scaling = results["batch_at_n"]
  axes[1].plot([r["num_records"] for r in scaling], [r["ns_per_record"] for r in scaling], "o-")
  axes[1].set_xscale("log")
  axes[1].set_xlabel("records in dataset")
  axes[1].set_ylabel("ns per record")
  axes[1].set_title(f"batch_at cost per record (B={scaling[0]['batch_size']}, 16-byte records)")
  axes[1].set_ylim(bottom=0)
  fig.suptitle(results["machine"], fontsize=8)
  fig.tight_layout()
  fig.savefig(path, dpi=110)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--quick", action="store_true", help="fewer repeats and sizes (smoke run)")
  args = parser.parse_args()
  repeats = 3 if args.quick else 9
  where = machine()
  log(f"[core benchmarks] {where}")
  mnist = make_arrays(60_000, (28, 28, 1))
  cifar = make_arrays(50_000, (32, 32, 3))
  results = {"machine": where, "throughput": [], "stall": [], "batch_at_n": []}
  results["throughput"] += throughput("mnist-shaped 60000x28x28x1", mnist, (128, 1024), repeats)
  results["throughput"] += throughput("cifar-shaped 50000x32x32x3", cifar, (128, 1024), repeats)
  results["stall"].append(stall("mnist-shaped 60000x28x28x1", mnist, 128))
  results["stall"].append(stall("cifar-shaped 50000x32x32x3", cifar, 1024))
  sizes = [10**3, 10**4, 10**5] if args.quick else [10**3, 10**4, 10**5, 10**6, 10**7]
  results["batch_at_n"] = batch_at_scaling(sizes, 512, repeats)
  RESULTS.mkdir(exist_ok=True)
  (RESULTS / "core.json").write_text(json.dumps(results, indent=1))
  plot(results, RESULTS / "core.png")
  log(f"[core benchmarks] wrote {RESULTS / 'core.json'} and {RESULTS / 'core.png'}")


if __name__ == "__main__":
  main()
