"""Runs that tfds_jax.testing rebuilds in a fresh process (fresh_process="testing_factories:NAME").

Each function takes no arguments and returns (source, train_step, carry); the
tests build the same objects in their own process and compare.
"""

import os

import jax
import jax.numpy as jnp
import numpy as np

import tfds_jax

TOY_DIR = "TFDS_JAX_TEST_TOY_DIR"  # the prepared toy_images directory a stream run reads


def regression_source():
  rng = np.random.default_rng(7)
  return tfds_jax.from_arrays({"x": rng.normal(size=(37, 3)).astype(np.float32),
                               "y": rng.normal(size=(37,)).astype(np.float32)})


def regression_step(w, batch):
  grad = jax.grad(lambda w: jnp.mean((batch["x"] @ w - batch["y"]) ** 2))(w)
  return w - 0.1 * grad


def regression():
  return regression_source(), regression_step, jnp.zeros(3, jnp.float32)


def step_reading_the_process_id(w, batch):
  """Broken on purpose: the process id is read at trace time, so every process differs."""
  return w + (os.getpid() % 1000) * batch["x"].mean()


def process_dependent():
  return regression_source(), step_reading_the_process_id, jnp.zeros((), jnp.float32)


def toy_stream():
  """The toy_images stream (random access or tf.data, by the files in $TFDS_JAX_TEST_TOY_DIR)."""
  return tfds_jax.stream("toy_images", "train", data_dir=os.environ[TOY_DIR], exclude_keys=["id"]), None, None
