"""Static-shape figures: variable-size images and padded Sequences, against tf.data doing the same.

Two datasets of benchmarks/datasets.py: ``bench_varimages`` (6,000 JPEG images
of 96 to 320 pixels a side, resized to 128x128, the original shape kept) and
``bench_objects`` (100,000 records of coco's ``objects`` Sequence, padded to
48 objects with their count kept). Each is made static by the same work two
ways:
  tfds_jax          load(..., shapes=...) or stream(..., shapes=...);
  tf.data           builder.as_dataset(...).map(the same resize / pad,
                    num_parallel_calls=AUTOTUNE), then .batch(1024) and
                    concatenated into one array per feature (eager), or
                    .shuffle(10000).batch(128).prefetch(2) (one streamed
                    epoch), through tfds.as_numpy; each streamed batch is put
                    on the JAX device, as tfds_jax's are.
Eager loads run in a fresh process each (TensorFlow imported before the clock
starts): time, and peak RSS during the call over the final arrays' size.
Streams: one shuffled first epoch, batch 128, including opening the stream;
tfds_jax's random access reads the ArrayRecord copy, its tf.data stream the
TFRecord files. Medians over interleaved repeats; ratios within this run; one
JSON line per figure on stdout.

Run: python benchmarks/features.py [--quick]
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

HERE = Path(__file__).parent
RESULTS = HERE / "results"
NAMES = ("bench_varimages", "bench_objects")
SIZE, OBJECTS, BATCH, STREAM_BATCH = 128, 48, 1024, 128


def shapes(name: str) -> dict:
  import tfds_jax  # pylint: disable=import-outside-toplevel
  if name == "bench_varimages":
    return {"image": tfds_jax.resize(SIZE, SIZE)}
  return {"objects": tfds_jax.pad(OBJECTS)}


def fix(name: str):
  """The same resize / pad as ``shapes(name)``, written by hand in TensorFlow (the baseline)."""
  import tensorflow as tf  # pylint: disable=import-outside-toplevel

  def images(r):
    out = tf.image.resize(r["image"], (SIZE, SIZE))
    return {"image": tf.cast(tf.clip_by_value(tf.round(out), 0, 255), tf.uint8),
            "image_shape": tf.shape(r["image"]), "label": r["label"]}

  def objects(r):
    n = tf.shape(r["objects"]["label"])[0]
    pad = lambda x: tf.pad(x, [[0, OBJECTS - n]] + [[0, 0]] * (len(x.shape) - 1))  # noqa: E731
    return {"image/id": r["image/id"], "objects": {k: pad(v) for k, v in r["objects"].items()},
            "objects_length": n}

  return images if name == "bench_varimages" else objects


def _rss(field: str = "VmRSS") -> int:
  """This process's resident bytes; ``VmHWM``: its peak (``ru_maxrss`` would count the parent's)."""
  with open("/proc/self/status") as f:
    return next(int(line.split()[1]) * 1024 for line in f if line.startswith(field))


def child(mode: str, name: str) -> dict:
  """One measurement, in this (fresh) process."""
  import tensorflow as tf  # pylint: disable=import-outside-toplevel
  tf.config.set_visible_devices([], "GPU")
  import jax  # pylint: disable=import-outside-toplevel
  import numpy as np  # pylint: disable=import-outside-toplevel
  import tensorflow_datasets as tfds  # pylint: disable=import-outside-toplevel
  import tfds_jax  # pylint: disable=import-outside-toplevel
  from benchmarks import datasets  # pylint: disable=import-outside-toplevel
  datasets.builders()
  tfrecord, array_record = datasets.DATA_DIR, datasets.DATA_DIR / "array_record"
  b = tfds.builder(name, data_dir=tfrecord)
  jax.devices()
  before = _rss()
  start = time.perf_counter()
  records, nbytes = 0, 0
  if mode == "tfds_jax load":
    src = tfds_jax.load(name, "train", data_dir=tfrecord, shapes=shapes(name), cache=False)
    jax.block_until_ready(src.data)
    records, nbytes = src.num_records, sum(v.nbytes for v in jax.tree.leaves(src.data))
  elif mode == "tf.data load":
    ds = b.as_dataset(split="train", shuffle_files=False, read_config=tfds.ReadConfig(try_autocache=False))
    ds = ds.map(fix(name), num_parallel_calls=tf.data.AUTOTUNE).batch(BATCH).prefetch(tf.data.AUTOTUNE)
    parts = list(tfds.as_numpy(ds))
    arrays = jax.tree.map(lambda *xs: np.concatenate(xs), *parts)
    del parts
    records, nbytes = len(jax.tree.leaves(arrays)[0]), sum(v.nbytes for v in jax.tree.leaves(arrays))
  elif mode in ("tfds_jax random access", "tfds_jax tf.data stream"):
    data_dir = array_record if mode == "tfds_jax random access" else tfrecord
    with tfds_jax.stream(name, "train", data_dir=data_dir, shapes=shapes(name)) as s:
      state = tfds_jax.init(s, seed=0, shuffle=True)
      for _ in range(s.num_records // STREAM_BATCH):
        batch, state = tfds_jax.next_batch(s, state, STREAM_BATCH)
        jax.block_until_ready(batch)
        records += STREAM_BATCH
  elif mode == "tf.data stream":
    ds = b.as_dataset(split="train", shuffle_files=True, read_config=tfds.ReadConfig(try_autocache=False))
    ds = ds.map(fix(name), num_parallel_calls=tf.data.AUTOTUNE).shuffle(10_000, seed=0)
    ds = ds.batch(STREAM_BATCH, drop_remainder=True).prefetch(2)
    for batch in tfds.as_numpy(ds):
      jax.block_until_ready(jax.device_put(batch))
      records += STREAM_BATCH
  else:
    raise ValueError(mode)
  seconds = time.perf_counter() - start
  peak = _rss("VmHWM")
  return {"mode": mode, "dataset": name, "seconds": seconds, "records": records,
          "peak_extra_bytes": peak - before, "array_bytes": nbytes}


def run_child(mode: str, name: str) -> dict:
  env = {**os.environ, "JAX_PLATFORMS": "cpu", "TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONPATH": str(HERE.parent)}
  out = subprocess.run([sys.executable, __file__, "--child", mode, name], env=env, capture_output=True,
                       text=True)
  if out.returncode:
    raise RuntimeError(f"{mode} on {name} failed:\n{out.stderr[-3000:]}")
  return json.loads(out.stdout.strip().splitlines()[-1])


def measure(name: str, modes: tuple, repeats: int) -> dict:
  runs: dict = {m: [] for m in modes}
  for r in range(repeats):
    for mode in modes if r % 2 == 0 else reversed(modes):  # interleaved, alternating order
      runs[mode].append(run_child(mode, name))
      print(f"[features] {name} {mode}: {runs[mode][-1]['seconds']:.2f}s", file=sys.stderr, flush=True)
  return runs


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--quick", action="store_true", help="one repeat")
  parser.add_argument("--child", nargs=2, metavar=("MODE", "NAME"), help=argparse.SUPPRESS)
  args = parser.parse_args()
  sys.path.insert(0, str(HERE.parent))
  if args.child:
    print(json.dumps(child(*args.child)))
    return
  from benchmarks import core  # pylint: disable=import-outside-toplevel
  from benchmarks import datasets  # pylint: disable=import-outside-toplevel
  datasets.prepare(NAMES)
  datasets.prepare(NAMES, file_format="array_record")
  repeats = 1 if args.quick else 3
  out = {"machine": core.machine(), "eager": [], "stream": []}
  for name in NAMES:
    runs = measure(name, ("tfds_jax load", "tf.data load"), repeats)
    med = {m: statistics.median(r["seconds"] for r in v) for m, v in runs.items()}
    ours, theirs = runs["tfds_jax load"][0], runs["tf.data load"][0]
    row = {"dataset": name, "records": ours["records"], "array_bytes": ours["array_bytes"],
           "seconds": med, "time_vs_tf_data": med["tfds_jax load"] / med["tf.data load"],
           "peak_over_arrays": {m: statistics.median(r["peak_extra_bytes"] for r in v) / ours["array_bytes"]
                                for m, v in runs.items()},
           "tf_data_array_bytes": theirs["array_bytes"]}
    out["eager"].append(row)
    print(json.dumps({"figure": "eager", **row}), flush=True)
  for name in NAMES:
    modes = ("tfds_jax random access", "tfds_jax tf.data stream", "tf.data stream")
    runs = measure(name, modes, repeats)
    rps = {m: statistics.median(r["records"] / r["seconds"] for r in v) for m, v in runs.items()}
    row = {"dataset": name, "batch_size": STREAM_BATCH, "records_per_s": rps,
           "random_access_vs_tf_data": rps["tfds_jax random access"] / rps["tf.data stream"],
           "tf_data_stream_vs_tf_data": rps["tfds_jax tf.data stream"] / rps["tf.data stream"]}
    out["stream"].append(row)
    print(json.dumps({"figure": "stream", **row}), flush=True)
  RESULTS.mkdir(exist_ok=True)
  (RESULTS / "features.json").write_text(json.dumps(out, indent=1))
  plot(out)


def plot(out: dict) -> None:
  import matplotlib  # pylint: disable=import-outside-toplevel
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel
  fig, (left, right) = plt.subplots(1, 2, figsize=(11, 3.8))
  names = [r["dataset"] for r in out["eager"]]
  x = range(len(names))
  for i, (mode, colour) in enumerate((("tfds_jax load", "tab:blue"), ("tf.data load", "tab:gray"))):
    left.bar([j + 0.38 * i for j in x], [r["seconds"][mode] for r in out["eager"]], 0.38, label=mode, color=colour)
  left.set_xticks([j + 0.19 for j in x], names)
  left.set_ylabel("seconds to static arrays (lower is better)")
  left.set_title("eager: resize / pad into arrays")
  left.legend(loc="upper right", fontsize=8)
  modes = ("tfds_jax random access", "tfds_jax tf.data stream", "tf.data stream")
  for i, (mode, colour) in enumerate(zip(modes, ("tab:blue", "tab:cyan", "tab:gray"))):
    right.bar([j + 0.27 * i for j in x], [r["records_per_s"][mode] / 1e3 for r in out["stream"]], 0.27,
              label=mode, color=colour)
  right.set_xticks([j + 0.27 for j in x], names)
  right.set_ylabel("thousand records / s (higher is better)")
  right.set_title(f"streamed: one shuffled epoch, batch {STREAM_BATCH}")
  right.legend(loc="upper right", fontsize=8)
  fig.tight_layout()
  fig.savefig(RESULTS / "features.png", dpi=110)


if __name__ == "__main__":
  main()
