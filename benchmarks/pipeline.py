"""Augmentation pipeline throughput: tfds_jax stages against tf.data and Grain.

The CIFAR-shaped split (50,000 x 32x32x3 uint8, loaded with tfds_jax.load, in
memory), one shuffled epoch per measurement, batch 128 and 1024, augmented
the usual CIFAR way: zero-pad by 4 and crop a random 32x32 window, random
horizontal flip, cast to float32 and normalize per channel (statistics from
tfds_jax.compute_statistics, the same numbers for every loader):
  pipeline (fori)      tfds_jax.pipeline(random_crop(padding=4), random_flip(),
                       to_float(scale=1.0), normalize(stats)): next_batch inside
                       one jitted lax.fori_loop, each batch consumed by adding
                       it elementwise into a float32 accumulator (see consume);
  source (fori)        the same loop over the plain source (no stages, uint8
                       batches, same order, same consumer): what the stages cost;
  one stage (fori)     the same loop over pipelines of the crop alone, the flip
                       alone, to_float + normalize alone: where the cost is;
  pipeline (per step)  a jitted next_batch of the pipeline called once per batch
                       from Python (the batch materialized, not consumed);
  tf.data              Dataset.from_tensor_slices(the same arrays)
                       .shuffle(10000).map(tf.pad + tf.image.random_crop +
                       tf.image.random_flip_left_right + cast/normalize,
                       num_parallel_calls=2, fixed: one per core).batch(B)
                       .prefetch(2), through tfds.as_numpy, each batch put on
                       the JAX device;
  Grain                MapDataset.source(records).shuffle(seed).random_map(numpy
                       pad/crop/flip/normalize per record).batch(B), indexed
                       batch by batch in the main thread (to_iter_dataset with 2
                       or 4 read threads was slower here: the work holds the
                       GIL), each batch put on the JAX device.
All variants interleaved in each repeat; medians; ratios of the first variant
over each other one within this run. One JSON line per figure on stdout.

Run: python benchmarks/pipeline.py [--quick]
"""

from __future__ import annotations

import argparse
import functools
import json
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, str(Path(__file__).parent.parent))
from benchmarks import core  # noqa: E402
from benchmarks import datasets  # noqa: E402
from benchmarks import peers  # noqa: E402

import tfds_jax  # noqa: E402

RESULTS = Path(__file__).parent / "results"
PAD = 4


def consume(acc, batch):
  """Adds the batch into an accumulator of its shape, elementwise, in float32.

  Every element is read, and nothing is reduced per step: on XLA:CPU a float
  jnp.sum over a computed batch took 1-2 ns per element here (trials while
  writing this benchmark), more than the stages being measured.
  """
  return jax.tree.map(lambda a, v: a + v.astype(jnp.float32), acc, batch)


def fori_loop(steps: int):
  """A jitted loop reading `steps` batches of a source or pipeline, each added
  into an accumulator; returns the accumulator's float32 sum."""

  @functools.partial(jax.jit, static_argnames="batch_size")
  def loop(data, state, batch_size=None):
    spec = jax.eval_shape(lambda: tfds_jax.next_batch(data, state, batch_size)[0])
    acc = jax.tree.map(lambda v: jnp.zeros(v.shape, jnp.float32), spec)

    def body(_, carry):
      acc, state = carry
      batch, state = tfds_jax.next_batch(data, state, batch_size)
      return consume(acc, batch), state
    acc = jax.lax.fori_loop(0, steps, body, (acc, state))[0]
    return sum(jnp.sum(v) for v in jax.tree.leaves(acc))

  return loop


def tf_data(arrays, mean: np.ndarray, std: np.ndarray, batch_size: int, seed: int):
  """The tf.data pipeline over in-memory arrays (built once, iterated per epoch)."""
  tf, tfds = tfds_jax._tfds.import_tf()  # pylint: disable=protected-access  (GPUs hidden from TF)
  height, width, channels = arrays["image"].shape[1:]

  def augment(record):
    image = tf.pad(record["image"], [[PAD, PAD], [PAD, PAD], [0, 0]])
    image = tf.image.random_crop(image, [height, width, channels])
    image = tf.image.random_flip_left_right(image)
    image = (tf.cast(image, tf.float32) - mean) / std
    return {"image": image, "label": record["label"]}

  ds = tf.data.Dataset.from_tensor_slices(arrays).shuffle(10_000, seed=seed)
  ds = ds.map(augment, num_parallel_calls=2).batch(batch_size).prefetch(2)

  def epoch():
    count = 0
    for batch in tfds.as_numpy(ds):
      jax.block_until_ready(jax.device_put(batch))
      count += len(batch["label"])
    return count

  return epoch, lambda: jax.device_put(next(iter(tfds.as_numpy(ds))))


def grain(arrays, mean: np.ndarray, std: np.ndarray, batch_size: int, seed: int):
  """Grain's MapDataset over the same arrays, numpy augmentation per record."""
  import grain as gr  # pylint: disable=import-outside-toplevel
  height, width = arrays["image"].shape[1:3]

  def augment(record, rng: np.random.Generator):
    image = np.pad(record["image"], ((PAD, PAD), (PAD, PAD), (0, 0)))
    y, x = rng.integers(0, 2 * PAD + 1, 2)
    image = image[y:y + height, x:x + width]
    if rng.random() < 0.5:
      image = image[:, ::-1]
    return {"image": (image.astype(np.float32) - mean) / std, "label": record["label"]}

  ds = gr.MapDataset.source(peers._Records(arrays)).shuffle(seed=seed)  # pylint: disable=protected-access
  ds = ds.random_map(augment, seed=seed).batch(batch_size)

  return functools.partial(peers.drain, ds), lambda: jax.device_put(ds[0])


def check_same_work(batches: dict) -> None:
  """Every loader's batch is float32 [B, 32, 32, 3] with the same statistics
  (normalized, with the zero padding the crops bring in: mean about -0.2)."""
  shapes = {name: (b["image"].shape, str(b["image"].dtype)) for name, b in batches.items()}
  assert len(set(shapes.values())) == 1, shapes
  moments = {name: (float(jnp.mean(b["image"])), float(jnp.std(b["image"]))) for name, b in batches.items()}
  m0, s0 = next(iter(moments.values()))
  assert all(abs(m - m0) < 0.1 and abs(s - s0) < 0.1 for m, s in moments.values()), moments


def throughput(source, batch_size: int, repeats: int, seed: int = 0) -> dict:
  n = source.num_records
  steps = n // batch_size
  host = {k: np.asarray(v) for k, v in source.data.items()}
  stats = tfds_jax.compute_statistics(source, features=["image"])
  mean, std = np.asarray(stats.mean["image"]), np.asarray(stats.std["image"])
  pipe = tfds_jax.pipeline(
      source, tfds_jax.random_crop(padding=PAD), tfds_jax.random_flip(), tfds_jax.to_float(scale=1.0),
      tfds_jax.normalize(stats), batch_size=batch_size, shuffle=True)
  pipe_state = tfds_jax.init(pipe, seed=seed)
  source_state = tfds_jax.init(source, seed=seed, shuffle=True)
  # One stage (or the two deterministic ones) at a time: where the cost is.
  parts = {name: tfds_jax.pipeline(source, *stages, batch_size=batch_size, shuffle=True) for name, stages in {
      "crop_only_fori": [tfds_jax.random_crop(padding=PAD)],
      "flip_only_fori": [tfds_jax.random_flip()],
      "float_normalize_only_fori": [tfds_jax.to_float(scale=1.0), tfds_jax.normalize(stats)]}.items()}

  loop = fori_loop(steps)

  def per_step():
    state, out = pipe_state, None
    for _ in range(steps):
      out, state = tfds_jax.next_batch(pipe, state)
    return out

  tf_epoch, tf_first = tf_data(host, mean, std, batch_size, seed)
  grain_epoch, grain_first = grain(host, mean, std, batch_size, seed)
  check_same_work({"pipeline": tfds_jax.next_batch(pipe, pipe_state)[0], "tf.data": tf_first(),
                   "Grain": grain_first()})
  log = f"[pipeline] B={batch_size}: {steps} steps, {repeats} interleaved repeats"
  core.log(log + " (tf.data and Grain take seconds per epoch)")
  t = core.compare({
      "pipeline_fori": lambda: loop(pipe, pipe_state),
      "source_fori": lambda: loop(source, source_state, batch_size),
      **{name: (lambda part=part: loop(part, pipe_state)) for name, part in parts.items()},
      "pipeline_per_step": per_step,
      "tf_data": tf_epoch,
      "grain": grain_epoch,
  }, repeats)
  records = {name: n if name in ("tf_data", "grain") else steps * batch_size for name in t}
  rps = {name: records[name] / t[name] for name in t}
  row = {"figure": "pipeline", "dataset": source.name, "batch_size": batch_size, "records_per_s": rps,
         "pipeline_fori_over": {name: rps["pipeline_fori"] / v for name, v in rps.items() if name != "pipeline_fori"}}
  print(json.dumps(row), flush=True)
  return row


def plot(results: dict, path: Path) -> None:
  import matplotlib  # pylint: disable=import-outside-toplevel
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel
  rows = results["rows"]
  labels = {"pipeline_fori": "tfds_jax pipeline (fori)", "source_fori": "tfds_jax source, no stages (fori)",
            "pipeline_per_step": "tfds_jax pipeline, per-step jit", "tf_data": "tf.data (map, 2 calls)",
            "grain": "Grain MapDataset (numpy)"}
  fig, ax = plt.subplots(figsize=(8, 4.5))
  width = 0.8 / len(labels)
  for i, (key, label) in enumerate(labels.items()):
    ax.bar(np.arange(len(rows)) + i * width, [r["records_per_s"][key] for r in rows], width, label=label)
  ax.set_yscale("log")
  ax.set_xticks(np.arange(len(rows)) + 0.4 - width / 2, [f"{r['dataset']}\nB={r['batch_size']}" for r in rows])
  ax.set_ylabel("records / s (log)")
  ax.set_title("One shuffled epoch with crop(pad 4) + flip + to_float + normalize", fontsize=9)
  ax.legend(fontsize=7)
  fig.suptitle(results["machine"], fontsize=8)
  fig.tight_layout()
  fig.savefig(path, dpi=120)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--quick", action="store_true", help="batch 128 only, one repeat")
  args = parser.parse_args()
  data_dir = datasets.prepare(("bench_cifar",))
  source = tfds_jax.load("bench_cifar", "train", data_dir=data_dir)
  results = {"machine": core.machine(), "rows": []}
  for b in (128,) if args.quick else (128, 1024):
    results["rows"].append(throughput(source, b, 1 if args.quick else 5))
  RESULTS.mkdir(exist_ok=True)
  (RESULTS / "pipeline.json").write_text(json.dumps(results, indent=1))
  plot(results, RESULTS / "pipeline.png")
  core.log(f"[pipeline] wrote {RESULTS / 'pipeline.json'} and pipeline.png")


if __name__ == "__main__":
  main()
