"""Runs inside a separate environment with datarax 0.1.4 (not a tfds_jax dependency).

Usage: DATARAX_PYTHON benchmarks/datarax_child.py ARRAYS.npz BATCH_SIZE REPEATS
Prints one JSON line: records/s of datarax's MemorySource (shuffle=True) over the
given arrays, for one epoch of get_batch_at inside a jitted fori_loop and of the
stateful get_batch called from Python.
"""

import json
import statistics
import sys
import time

import flax.nnx as nnx
import jax
import jax.numpy as jnp
import numpy as np
from datarax.sources import MemorySource, MemorySourceConfig


def main():
  path, batch_size, repeats = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
  arrays = dict(np.load(path))
  n = len(arrays["label"])
  steps = n // batch_size
  source = MemorySource(MemorySourceConfig(shuffle=True), arrays, rngs=nnx.Rngs(0))
  key = jax.random.key(0)

  @nnx.jit(static_argnums=(2, 3))
  def batch_at_loop(src, key, b, steps):
    def body(i, acc):
      batch = src.get_batch_at(i * b, b, key)
      return acc + sum(jnp.sum(v, dtype=jnp.uint32) for v in jax.tree.leaves(batch))
    return jax.lax.fori_loop(0, steps, body, jnp.uint32(0))

  def stateful_epoch():
    out = None
    for _ in range(steps):
      out = source.get_batch(batch_size)
    return out

  def timed(fn):
    jax.block_until_ready(fn())
    ts = []
    for _ in range(repeats):
      t = time.perf_counter()
      jax.block_until_ready(fn())
      ts.append(time.perf_counter() - t)
    return statistics.median(ts)

  t_at = timed(lambda: batch_at_loop(source, key, batch_size, steps))
  t_get = timed(stateful_epoch)
  print(json.dumps({"datarax_batch_at_fori_rps": steps * batch_size / t_at,
                    "datarax_get_batch_rps": steps * batch_size / t_get}))


if __name__ == "__main__":
  main()
