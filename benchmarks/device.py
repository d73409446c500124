"""Figures on whatever accelerator JAX sees; on a CPU-only machine, a smoke run.

Figures (one JSON line each on stdout; all of them in OUT/device.json, a table
in OUT/device.md; OUT is benchmarks/results unless --out says otherwise):
  fori        records/s of shuffled next_batch inside one jitted lax.fori_loop
              against the limit, a gather through a precomputed permutation in
              the same loop (core.py's programs), on MNIST- and CIFAR-shaped
              uint8 arrays already on the device;
  train_step  the same inside a jitted train step: an MLP's step fed by
              next_batch in one fori_loop against the same step fed by batches
              already on the device (tfds_jax.testing.benchmark);
  load        tfds_jax.load of the MNIST-shaped split straight to the device
              (cache=False: decoded by TensorFlow on the host): seconds,
              records/s, device bytes it added;
  stream      a random-access stream (ArrayRecord) putting batches on the
              device: time to the first batch, records/s after it;
  tf_memory   TensorFlow holds no accelerator memory: the device's memory
              statistics (JAX's allocator) before and after the first
              TensorFlow use in the process (a load of 1% of the split) and
              after the load, TensorFlow's visible GPUs, and, where nvidia-smi
              exists, the GPU's memory in use as the driver counts it
              (TensorFlow's allocations included); "n/a" on a CPU.
The datasets are prepared in a separate process, kept off the accelerator.
At most about 8 minutes on an accelerator with the data prepared
(bench_mnist, as ArrayRecord, takes a few minutes more the first time);
--smoke runs small sizes in well under a minute on a CPU (used by the tests).

Run: python benchmarks/device.py [--smoke] [--out DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, str(Path(__file__).parent.parent))
from benchmarks import core  # noqa: E402
from benchmarks import datasets  # noqa: E402

import tfds_jax  # noqa: E402
from tfds_jax import testing  # noqa: E402

ROOT = Path(__file__).parent.parent
log = core.log


def device_name() -> str:
  d = jax.devices()[0]
  return d.platform if d.platform == "cpu" else f"{d.platform} ({d.device_kind})"


def memory_stats() -> dict | None:
  """The default device's memory statistics (JAX's allocator), or None (a CPU)."""
  stats = jax.devices()[0].memory_stats()
  return None if not stats else {k: int(v) for k, v in stats.items() if isinstance(v, (int, np.integer))}


def driver_device_memory() -> int | None:
  """Bytes in use on the default GPU as the NVIDIA driver counts them (every
  process and library on it, TensorFlow included), or None."""
  device = jax.devices()[0]
  if device.platform != "gpu" or not shutil.which("nvidia-smi"):
    return None
  out = subprocess.run(["nvidia-smi", "--query-gpu=memory.used", "--format=csv,noheader,nounits",
                        "-i", str(device.local_hardware_id)], capture_output=True, text=True)
  try:
    return int(out.stdout.strip().splitlines()[0]) * 2**20
  except (ValueError, IndexError):
    return None


def prepare(name: str) -> Path:
  """Prepares ``name`` as ArrayRecord in a separate process with no accelerator
  visible (TensorFlow encodes the PNGs there); returns its data_dir."""
  code = f"from benchmarks import datasets; datasets.prepare(({name!r},), file_format='array_record')"
  env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "JAX_PLATFORMS": "cpu", "PYTHONPATH": str(ROOT)}
  subprocess.run([sys.executable, "-c", code], check=True, env=env, cwd=ROOT, stdout=sys.stderr)  # progress
  return datasets.DATA_DIR / "array_record"


def fori(sizes: dict, batch_sizes, repeats: int) -> list[dict]:
  rows = []
  for name, (n, shape) in sizes.items():
    arrays = jax.device_put(core.make_arrays(n, shape))
    source = tfds_jax.from_arrays(arrays)
    for b in batch_sizes:
      steps = max(1, 2 * n // b)
      limit, next_batch_loop, _ = core.fori_loops(b, steps)
      order = core.precomputed_order(n, 42, steps * b)
      state = tfds_jax.init(source, seed=42, shuffle=True)
      t = core.compare({"limit": lambda: limit(source.data, order),
                        "next_batch": lambda: next_batch_loop(source, state)}, repeats)
      assert int(limit(source.data, order)) == int(next_batch_loop(source, state))  # same records
      row = {"figure": "fori", "array": name, "batch_size": b, "records": steps * b,
             "limit_rps": steps * b / t["limit"], "next_batch_rps": steps * b / t["next_batch"],
             "next_batch_over_limit": t["limit"] / t["next_batch"]}
      print(json.dumps(row), flush=True)
      rows.append(row)
  return rows


def mlp_step(params, batch):
  """One SGD step of a 784-256-10 MLP on raw uint8 images, labels one-hot in the step."""
  def loss(params):
    x = batch["image"].reshape(batch["image"].shape[0], -1).astype(jnp.float32) / 255.0
    (w1, b1), (w2, b2) = params
    logits = jax.nn.relu(x @ w1 + b1) @ w2 + b2
    return -jnp.mean(jnp.sum(jax.nn.log_softmax(logits) * jax.nn.one_hot(batch["label"], 10), -1))
  grads = jax.grad(loss)(params)
  return jax.tree.map(lambda p, g: p - 0.01 * g, params, grads)


def train_step(n: int, batch_sizes, steps: int, repeats: int) -> list[dict]:
  source = tfds_jax.from_arrays(jax.device_put(core.make_arrays(n, (28, 28, 1))))
  k1, k2 = jax.random.split(jax.random.key(0))
  params = ((jax.random.normal(k1, (784, 256)) * 0.05, jnp.zeros(256)),
            (jax.random.normal(k2, (256, 10)) * 0.05, jnp.zeros(10)))
  rows = []
  for b in batch_sizes:
    r = testing.benchmark(mlp_step, params, source, tfds_jax.init(source, seed=0, shuffle=True), steps, b,
                          repeats=repeats)
    row = {"figure": "train_step", "model": "MLP 784-256-10", "batch_size": b, "steps": steps,
           **{k: v for k, v in r._asdict().items() if isinstance(v, float)}}
    print(json.dumps(row), flush=True)
    rows.append(row)
  return rows


def load_and_memory(name: str, data_dir: Path) -> tuple[dict, dict]:
  """The TensorFlow-memory check, then the load figure. A load of 1% of the split
  is the first TensorFlow use in this process; the device's memory is read
  before it, after it and after the timed load of the whole split."""
  device = jax.devices()[0]
  before = memory_stats(), driver_device_memory()
  tfds_jax.load(name, "train[:1%]", data_dir=data_dir, cache=False, device=device)
  after_tf = memory_stats(), driver_device_memory()
  start = time.perf_counter()
  source = tfds_jax.load(name, "train", data_dir=data_dir, cache=False, device=device)
  jax.block_until_ready(source.data)
  seconds = time.perf_counter() - start
  after = memory_stats(), driver_device_memory()
  nbytes = sum(v.nbytes for v in source.data.values())
  on_device = all(v.devices() == {device} for v in source.data.values())
  load = {"figure": "load", "dataset": name, "records": source.num_records, "bytes": nbytes,
          "seconds": seconds, "records_per_s": source.num_records / seconds, "on_device": on_device}
  tf = sys.modules.get("tensorflow")
  in_use = lambda stats: None if not stats else stats.get("bytes_in_use", 0)  # noqa: E731
  delta = lambda a, b: None if a is None or b is None else b - a  # noqa: E731
  memory = {
      "figure": "tf_memory", "platform": device.platform,
      "stats_before": before[0], "stats_after_tf": after_tf[0], "stats_after_load": after[0],
      "jax_bytes_added_by_tf": delta(in_use(before[0]), in_use(after_tf[0])),
      "jax_bytes_added_by_load": delta(in_use(after_tf[0]), in_use(after[0])), "array_bytes": nbytes,
      "driver_bytes": [before[1], after_tf[1], after[1]],
      "driver_bytes_added_by_tf": delta(before[1], after_tf[1]),
      "tf_visible_gpus": None if tf is None else len(tf.config.get_visible_devices("GPU")),
  }
  print(json.dumps(memory), flush=True)
  print(json.dumps(load), flush=True)
  del source
  return load, memory


def stream(name: str, data_dir: Path, batch_size: int, batches: int) -> dict:
  device = jax.devices()[0]
  start = time.perf_counter()
  with tfds_jax.stream(name, "train", data_dir=data_dir, device=device) as s:
    state = tfds_jax.init(s, seed=0, shuffle=True)
    batch, state = tfds_jax.next_batch(s, state, batch_size)
    jax.block_until_ready(batch)
    first = time.perf_counter() - start
    on_device = all(v.devices() == {device} for v in batch.values())
    start = time.perf_counter()
    for _ in range(batches):
      batch, state = tfds_jax.next_batch(s, state, batch_size)
      jax.block_until_ready(batch)
    seconds = time.perf_counter() - start
  row = {"figure": "stream", "dataset": name, "batch_size": batch_size, "batches": batches,
         "first_batch_s": first, "records_per_s": batches * batch_size / seconds, "on_device": on_device}
  print(json.dumps(row), flush=True)
  return row


def _m(x: float) -> str:
  return f"{x / 1e6:.2f}M" if x >= 1e6 else f"{x / 1e3:.1f}k"


def _mib(x) -> str:
  return "n/a" if x is None else f"{x / 2**20:.1f} MiB"


def markdown(r: dict) -> str:
  L = [f"Device figures on **{r['device']}** ({r['machine']}){' — smoke run, small sizes' if r['smoke'] else ''}.\n",
       "| array | B | limit: precomputed-permutation gather (fori) | shuffled next_batch (fori) | next_batch / limit |",
       "|---|---|---|---|---|"]
  L += [f"| {x['array']} | {x['batch_size']} | {_m(x['limit_rps'])}/s | {_m(x['next_batch_rps'])}/s |"
        f" {x['next_batch_over_limit']:.2f}x |" for x in r["fori"]]
  L += ["", "| train step | B | steps | with next_batch | input-free | input share | compile |", "|---|---|---|---|---|---|---|"]
  L += [f"| {x['model']} | {x['batch_size']} | {x['steps']} | {_m(x['records_per_s'])}/s |"
        f" {_m(x['input_free_records_per_s'])}/s | {x['input_share']:.0%} | {x['compile_s']:.2f} s |"
        for x in r["train_step"]]
  ld, st, mem = r["load"], r["stream"], r["tf_memory"]
  L += ["", "| load / stream | records | time | records/s | on the device |", "|---|---|---|---|---|",
        f"| `load({ld['dataset']!r}, cache=False, device=...)` | {ld['records']:,} | {ld['seconds']:.2f} s |"
        f" {_m(ld['records_per_s'])}/s | {'yes' if ld['on_device'] else 'no'} |",
        f"| random-access `stream`, B={st['batch_size']} | {st['batches'] * st['batch_size']:,} |"
        f" first batch {st['first_batch_s']:.2f} s | {_m(st['records_per_s'])}/s | {'yes' if st['on_device'] else 'no'} |"]
  driver = " / ".join(_mib(x) for x in mem["driver_bytes"])
  L += ["", "| device memory around the first TensorFlow use (a load of 1%) and the load | |", "|---|---|",
        f"| added to JAX's allocator by TensorFlow's start and the small load | {_mib(mem['jax_bytes_added_by_tf'])} |",
        f"| added to JAX's allocator by the load (its arrays: {_mib(mem['array_bytes'])}) |"
        f" {_mib(mem['jax_bytes_added_by_load'])} |",
        f"| in use on the GPU, driver's count: before / after TensorFlow's start / after the load | {driver} |",
        f"| GPUs visible to TensorFlow | {'n/a' if mem['tf_visible_gpus'] is None else mem['tf_visible_gpus']} |"]
  return "\n".join(L) + "\n"


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--smoke", action="store_true", help="small sizes, one repeat: a check that it runs")
  parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results", help="where to write")
  args = parser.parse_args()
  smoke = args.smoke
  log(f"[device] {device_name()}{' (smoke run)' if smoke else ''}")
  name = "bench_mnist_small" if smoke else "bench_mnist"
  data_dir = prepare(name)
  datasets.builders()  # registers the builders with TFDS (no TensorFlow op runs)
  jax.devices()
  results = {"machine": core.machine(), "device": device_name(), "platform": jax.devices()[0].platform,
             "smoke": smoke}
  log("[device] TensorFlow's device memory, then a load straight to the device")
  results["load"], results["tf_memory"] = load_and_memory(name, data_dir)
  log("[device] random-access stream to the device")
  results["stream"] = stream(name, data_dir, 128, 8 if smoke else 200)
  log("[device] shuffled next_batch in fori_loop against the precomputed-permutation gather")
  sizes = ({"mnist-shaped 4096x28x28x1": (4096, (28, 28, 1))} if smoke else
           {"mnist-shaped 60000x28x28x1": (60_000, (28, 28, 1)), "cifar-shaped 50000x32x32x3": (50_000, (32, 32, 3))})
  results["fori"] = fori(sizes, (128,) if smoke else (128, 1024), 1 if smoke else 9)
  log("[device] the same inside a jitted train step against batches already on the device")
  results["train_step"] = train_step(4096 if smoke else 60_000, (128,) if smoke else (128, 1024),
                                     10 if smoke else 200, 1 if smoke else 5)
  args.out.mkdir(parents=True, exist_ok=True)
  (args.out / "device.json").write_text(json.dumps(results, indent=1))
  (args.out / "device.md").write_text(markdown(results))
  log(f"[device] wrote {args.out / 'device.json'} and device.md")


if __name__ == "__main__":
  main()
