"""Training with tfds_jax's epoch drivers against a Python loop of jitted steps.

Issue 5 asks for the gain of running the training loop inside jit measured
against a Python loop calling a jitted step per batch, on the same work. Three
workloads, all shuffled, batch as given:
  mlp_mnist   the demo's MLP (784-256-256-10, adam) on the MNIST-shaped split
              loaded with tfds_jax.load, raw batches (uint8 pixels scaled to
              [0, 1] in the step), batch 32 and 128, one epoch;
  mlp_cifar   an MLP (3072-256-10, adam) on the CIFAR-shaped split through a
              pipeline: random_crop(padding=4), random_flip, to_float,
              normalize (computed statistics), one_hot(10); batch 128, one epoch;
  conv_cifar  a tiny conv net (two 3x3 stride-2 convolutions, 16 and 32
              channels, then dense; adam) on the same pipeline, batch 128,
              20 steps only: on XLA:CPU its step runs many times slower inside
              a loop body than as a jitted call (jax-ml/jax#12868), so a whole
              epoch inside the driver would take minutes.
Each is run these ways, with the same train_step(carry, batch) -> carry:
  run_steps   tfds_jax.run_steps: every step (next_batch, stages, forward,
              backward, adam) inside one jitted lax.fori_loop, floor(n / B) steps;
  run_epochs  tfds_jax.run_epochs(progress=False): jitted lax.while_loop until
              the epoch ends (ceil(n / B) steps; the last batch wraps); not for
              conv_cifar;
  python      a jitted single step (next_batch + train_step) called once per
              batch from a Python loop: the same work, one dispatch per batch.
Records/s are medians over interleaved repeats, after compilation; ratios are
driver over python within this run. One JSON line per figure on stdout.

Run: python benchmarks/training.py [--quick]
"""

from __future__ import annotations

import argparse
import functools
import json
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import optax

sys.path.insert(0, str(Path(__file__).parent.parent))
from benchmarks import core  # noqa: E402
from benchmarks import datasets  # noqa: E402

import tfds_jax  # noqa: E402

RESULTS = Path(__file__).parent / "results"
OPTIMIZER = optax.adam(1e-3)
CONV_STEPS = 20  # the conv net runs a few steps, not an epoch: see the module docstring


def mlp_init(key: jax.Array, sizes: list[int]) -> list[tuple[jax.Array, jax.Array]]:
  keys = jax.random.split(key, len(sizes) - 1)
  return [(jax.random.normal(k, (m, n)) * jnp.sqrt(2.0 / m), jnp.zeros(n))
          for k, m, n in zip(keys, sizes[:-1], sizes[1:])]


def mlp_apply(params, x: jax.Array) -> jax.Array:
  x = x.reshape(x.shape[0], -1)
  for w, b in params[:-1]:
    x = jax.nn.relu(x @ w + b)
  w, b = params[-1]
  return x @ w + b


def conv_init(key: jax.Array) -> dict[str, jax.Array]:
  """Two 3x3 stride-2 convolutions (16, 32 channels) and a dense layer, for 32x32x3."""
  k1, k2, k3 = jax.random.split(key, 3)
  he = lambda k, shape, fan_in: jax.random.normal(k, shape) * jnp.sqrt(2.0 / fan_in)  # noqa: E731
  return {"c1": he(k1, (3, 3, 3, 16), 27), "b1": jnp.zeros(16),
          "c2": he(k2, (3, 3, 16, 32), 144), "b2": jnp.zeros(32),
          "w": he(k3, (8 * 8 * 32, 10), 8 * 8 * 32), "b": jnp.zeros(10)}


def conv_apply(params, x: jax.Array) -> jax.Array:
  dims = ("NHWC", "HWIO", "NHWC")
  for c, b in (("c1", "b1"), ("c2", "b2")):
    x = jax.lax.conv_general_dilated(x, params[c], (2, 2), "SAME", dimension_numbers=dims)
    x = jax.nn.relu(x + params[b])
  return x.reshape(x.shape[0], -1) @ params["w"] + params["b"]


def make_train_step(apply):
  """A train step for a model; made once per model, here, since drivers take
  it as a static argument (a new function object compiles again)."""

  def train_step(carry, batch):
    """One adam step; the carry is (params, opt_state, summed loss). Raw uint8
    images are scaled to [0, 1] and integer labels one-hot encoded here (a
    pipeline's stages have done both already)."""
    params, opt_state, total = carry
    x, y = batch["image"], batch["label"]
    if x.dtype == jnp.uint8:
      x = x.astype(jnp.float32) / 255.0
    if y.ndim == 1:
      y = jax.nn.one_hot(y, 10)

    def loss_fn(p):
      return optax.softmax_cross_entropy(apply(p, x), y).mean()

    loss, grads = jax.value_and_grad(loss_fn)(params)
    updates, opt_state = OPTIMIZER.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, total + loss

  return train_step


MLP_STEP = make_train_step(mlp_apply)
CONV_STEP = make_train_step(conv_apply)


@functools.partial(jax.jit, static_argnames=("train_step", "batch_size"))
def python_step(train_step, carry, data, state, batch_size=None):
  """The per-step baseline: one batch and one train step in one jitted call."""
  batch, state = tfds_jax.next_batch(data, state, batch_size)
  return train_step(carry, batch), state


def run_fns(train_step, data, batch_size: int | None, carry0, state0, steps: int | None):
  """The ways to train over one epoch (or `steps` steps); each returns
  (carry, records trained on)."""
  n = data.num_records
  size = batch_size or data.batch_size
  num_steps = steps or n // size

  def run_steps():
    carry, _ = tfds_jax.run_steps(train_step, carry0, data, state0, num_steps, batch_size)
    return carry, num_steps * size

  def run_epochs():
    carry, state = tfds_jax.run_epochs(train_step, carry0, data, state0, 1, batch_size, progress=False)
    return carry, int(state.epoch) * n + int(state.index)

  def python():
    carry, state = carry0, state0
    for _ in range(num_steps):
      carry, state = python_step(train_step, carry, data, state, batch_size)
    return carry, num_steps * size

  fns = {"run_steps": run_steps, "run_epochs": run_epochs, "python": python}
  return fns if steps is None else {k: v for k, v in fns.items() if k != "run_epochs"}


def measure(workload: str, dataset: str, data, batch_size: int | None, train_step, params,
            repeats: int, steps: int | None = None) -> dict:
  """records/s of each way to train; one epoch, or `steps` steps (no run_epochs)."""
  size = batch_size or data.batch_size
  carry0 = (params, OPTIMIZER.init(params), jnp.float32(0))
  fns = run_fns(train_step, data, batch_size, carry0, tfds_jax.init(data, seed=0, shuffle=True), steps)
  first = {name: fn() for name, fn in fns.items()}  # compiles each
  records = {name: count for name, (_, count) in first.items()}
  # Same training, or the comparison is meaningless: run_steps and python take
  # the same batches in the same order, so their summed losses agree.
  loss_a, loss_b = float(first["run_steps"][0][2]), float(first["python"][0][2])
  assert abs(loss_a - loss_b) <= 1e-3 * abs(loss_b), (loss_a, loss_b)
  core.log(f"[training] {workload} B={size}, {records['run_steps'] // size} steps: {repeats} interleaved repeats")
  t = core.compare({name: (lambda fn=fn: fn()[0]) for name, fn in fns.items()}, repeats)
  rps = {name: records[name] / t[name] for name in fns}
  row = {"figure": "training", "workload": workload, "dataset": dataset, "batch_size": size,
         "steps": records["run_steps"] // size, "full_epoch": steps is None, "records_per_s": rps,
         **{f"{name}_over_python": rps[name] / rps["python"] for name in fns if name != "python"}}
  print(json.dumps(row), flush=True)
  return row


def plot(results: dict, path: Path) -> None:
  import matplotlib  # pylint: disable=import-outside-toplevel
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel
  rows = results["rows"]
  fig, ax = plt.subplots(figsize=(8, 4.5))
  labels = {"run_steps": "tfds_jax.run_steps (one fori_loop)",
            "run_epochs": "tfds_jax.run_epochs(progress=False)",
            "python": "Python loop of jitted steps"}
  width = 0.8 / len(labels)
  for i, (key, label) in enumerate(labels.items()):
    ax.bar([j + (i - 1) * width for j in range(len(rows))],
           [r["records_per_s"].get(key, 0) for r in rows], width, label=label)
  for j, r in enumerate(rows):
    ax.text(j - width, r["records_per_s"]["run_steps"], f"{r['run_steps_over_python']:.2f}x",
            ha="center", va="bottom", fontsize=8)
  ax.set_xticks(range(len(rows)), [
      f"{r['workload']}\nB={r['batch_size']}" + ("" if r["full_epoch"] else f", {r['steps']} steps")
      for r in rows])
  ax.set_yscale("log")
  ax.set_ylabel("training records/s (log)")
  ax.set_title("Training, same step (ratio: run_steps / Python loop)", fontsize=9)
  ax.legend(fontsize=8)
  fig.suptitle(results["machine"], fontsize=8)
  fig.tight_layout()
  fig.savefig(path, dpi=120)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--quick", action="store_true", help="one repeat")
  args = parser.parse_args()
  repeats = 1 if args.quick else 5
  data_dir = datasets.prepare(("bench_mnist", "bench_cifar"))
  mnist = tfds_jax.load("bench_mnist", "train", data_dir=data_dir)
  cifar = tfds_jax.load("bench_cifar", "train", data_dir=data_dir)
  stats = tfds_jax.compute_statistics(cifar, features=["image"])
  pipe = tfds_jax.pipeline(
      cifar, tfds_jax.random_crop(padding=4), tfds_jax.random_flip(), tfds_jax.to_float(scale=1.0),
      tfds_jax.normalize(stats), tfds_jax.one_hot(10), batch_size=128, shuffle=True)
  rows = [measure("mlp_mnist", "bench_mnist", mnist, b, MLP_STEP,
                  mlp_init(jax.random.key(0), [28 * 28, 256, 256, 10]), repeats) for b in (32, 128)]
  rows.append(measure("mlp_cifar", "bench_cifar", pipe, None, MLP_STEP,
                      mlp_init(jax.random.key(0), [32 * 32 * 3, 256, 10]), repeats))
  rows.append(measure("conv_cifar", "bench_cifar", pipe, None, CONV_STEP, conv_init(jax.random.key(0)),
                      repeats=1 if args.quick else 3, steps=5 if args.quick else CONV_STEPS))
  results = {"machine": core.machine(), "rows": rows}
  RESULTS.mkdir(exist_ok=True)
  (RESULTS / "training.json").write_text(json.dumps(results, indent=1))
  plot(results, RESULTS / "training.png")
  core.log(f"[training] wrote {RESULTS / 'training.json'} and training.png")


if __name__ == "__main__":
  main()
