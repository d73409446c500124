"""The demo: a real training run, with each epoch inside one jitted ``lax.fori_loop``.

Loads a TFDS image-classification dataset with :func:`tfds_jax.load` (by
default the embedded ``digits``, prepared offline), trains a small optax MLP
on shuffled batches from :func:`tfds_jax.next_batch`, and reports per-epoch loss,
test accuracy and records per second.
"""

from __future__ import annotations

import functools
import sys
import time
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

try:
  import optax
except ImportError as e:
  raise ImportError("Expected optax for the demo, got none installed; install the demo's extra:"
                    " `pip install 'tfds_jax[demo]'` (in a checkout: `uv run --extra demo`).") from e

from tfds_jax._source import SourceState, init, next_batch
from tfds_jax._tfds import info as dataset_info
from tfds_jax._tfds import load


class TrainState(NamedTuple):
  params: Any  # MLP weights: list of (w float32[in, out], b float32[out])
  opt_state: Any  # optax state
  data: SourceState  # where the data stream stands


def mlp_init(key: jax.Array, sizes: list[int]) -> list[tuple[jax.Array, jax.Array]]:
  keys = jax.random.split(key, len(sizes) - 1)
  return [(jax.random.normal(k, (m, n)) * jnp.sqrt(2.0 / m), jnp.zeros(n))
          for k, m, n in zip(keys, sizes[:-1], sizes[1:])]


def mlp_apply(params, x: jax.Array) -> jax.Array:
  for w, b in params[:-1]:
    x = jax.nn.relu(x @ w + b)
  w, b = params[-1]
  return x @ w + b


def features(batch, image_key: str, label_key: str) -> tuple[jax.Array, jax.Array]:
  images = batch[image_key]
  scale = 255.0 if images.dtype == jnp.uint8 else 1.0
  x = images.reshape(images.shape[0], -1).astype(jnp.float32) / scale
  return x, batch[label_key]


def loss_fn(params, x, y):
  logits = mlp_apply(params, x)
  return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()


@functools.partial(jax.jit, static_argnames=("optimizer", "keys", "batch_size", "steps"))
def train_epoch(state: TrainState, source, optimizer, keys, batch_size: int, steps: int):
  """Runs ``steps`` training steps in one ``lax.fori_loop``; returns (state, mean loss)."""

  def step(_, carry):
    state, total = carry
    batch, data = next_batch(source, state.data, batch_size)
    loss, grads = jax.value_and_grad(loss_fn)(state.params, *features(batch, *keys))
    updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    return TrainState(params, opt_state, data), total + loss

  state, total = jax.lax.fori_loop(0, steps, step, (state, jnp.float32(0)))
  return state, total / steps


@functools.partial(jax.jit, static_argnames="keys")
def accuracy(params, source, keys) -> jax.Array:
  x, y = features(source.data, *keys)
  return jnp.mean(jnp.argmax(mlp_apply(params, x), -1) == y)


def run(dataset: str = "digits", *, epochs: int = 15, batch_size: int = 32, seed: int = 0,
        hidden: int = 256, learning_rate: float = 1e-3, data_dir: str | None = None,
        train_split: str = "train", test_split: str | None = None, out=sys.stdout) -> dict:
  """Trains and evaluates; returns the final metrics."""
  say = functools.partial(print, file=out, flush=True)
  t0 = time.perf_counter()
  train = load(dataset, train_split, as_supervised=True, data_dir=data_dir)
  info = dataset_info(train)
  if test_split is None:
    test_split = next((s for s in ("test", "validation") if s in info.splits), None)
    if test_split is None:
      raise ValueError(f"Expected {dataset!r} to have a 'test' or 'validation' split, got"
                       f" {sorted(info.splits)}; pass --test-split.")
  test = load(dataset, test_split, as_supervised=True, data_dir=data_dir)
  keys = tuple(info.supervised_keys)
  num_classes = info.features[keys[1]].num_classes
  in_dim = int(np.prod(train.data[keys[0]].shape[1:]))
  say(f"{info.full_name}: {train.num_records} train / {test.num_records} {test_split} records,"
      f" {keys[0]} {tuple(train.data[keys[0]].shape[1:])}, {num_classes} classes"
      f" (loaded in {time.perf_counter() - t0:.1f}s)")
  optimizer = optax.adam(learning_rate)
  params = mlp_init(jax.random.key(seed), [in_dim, hidden, hidden, num_classes])
  state = TrainState(params, optimizer.init(params), init(train, seed=seed, shuffle=True))
  steps = -(-train.num_records // batch_size)
  history = []
  for epoch in range(1, epochs + 1):
    start = time.perf_counter()
    state, loss = train_epoch(state, train, optimizer, keys, batch_size, steps)
    loss = float(loss)
    seconds = time.perf_counter() - start
    acc = float(accuracy(state.params, test, keys))
    rps = steps * batch_size / seconds
    note = " (includes compilation)" if epoch == 1 else ""
    say(f"epoch {epoch:3d}/{epochs}  loss {loss:.4f}  {test_split} accuracy {acc:.4f}"
        f"  {rps:,.0f} records/s{note}  [data epoch {int(state.data.epoch)}, index {int(state.data.index)}]")
    history.append({"epoch": epoch, "loss": loss, "accuracy": acc, "records_per_s": rps})
  say(f"final {test_split} accuracy: {history[-1]['accuracy']:.4f}")
  return {"history": history, "accuracy": history[-1]["accuracy"]}
