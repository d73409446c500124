"""Sharded batches: every device, and every process, reads only its own rows.

A global batch of ``size`` records sharded over a mesh's data axis is cut into
``count`` equal slices; device ``d`` holds rows ``[d * size // count, (d + 1) *
size // count)``. Sources compute and gather only the rows of their slice:

* one process: under ``jax.shard_map`` each device computes the record indices
  of its rows and gathers them from its (replicated) copy of the data;
* several processes (``jax.distributed``): each process computes the rows its
  own devices hold, gathers them, and the global array is put together with
  ``jax.make_array_from_process_local_data``.

Which records fill which row never depends on the mesh or on the number of
processes: row ``r`` is always logical position ``start + r``.
"""

from __future__ import annotations

import functools
import math
from typing import Any, Callable, Mapping

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from tfds_jax import _features


def batch_axes(sharding: Any, size: int) -> tuple[tuple[str, ...], int]:
  """Checks a batch sharding; returns its data axes and the number of slices.

  Raises:
    TypeError: if ``sharding`` is not a ``NamedSharding``.
    ValueError: if it does not split the leading (batch) axis and only that
      one, or ``size`` is not a multiple of the number of slices.
  """
  if not isinstance(sharding, NamedSharding):
    raise TypeError(
        f"Expected a jax.sharding.NamedSharding over the batch axis, got"
        f" {type(sharding).__name__}; pass NamedSharding(mesh, PartitionSpec('data')).")
  spec = tuple(sharding.spec)
  first = spec[0] if spec else None
  if first is None or any(s is not None for s in spec[1:]):
    raise ValueError(
        f"Expected a sharding that splits the batch axis only, such as PartitionSpec('data'),"
        f" got {sharding.spec}; put the mesh's data axis first and nothing after it.")
  axes = tuple(first) if isinstance(first, (tuple, list)) else (first,)
  count = math.prod(sharding.mesh.shape[a] for a in axes)
  if size % count:
    raise ValueError(
        f"Expected a batch size divisible by the {count} slices of {sharding.spec} over mesh"
        f" {dict(sharding.mesh.shape)}, got {size}; use a multiple of {count}.")
  return axes, count


def batch_sharding(sharding: NamedSharding) -> NamedSharding:
  """The sharding every batch leaf gets: leading axis split, the rest whole."""
  return NamedSharding(sharding.mesh, P(sharding.spec[0]))


def process_rows(sharding: NamedSharding, size: int) -> np.ndarray:
  """Rows of a ``size``-record global batch held by this process's devices.

  Returns:
    int32[m], sorted, in the order ``make_array_from_process_local_data``
    expects this process's data.
  """
  slices = batch_sharding(sharding).addressable_devices_indices_map((size,)).values()
  ranges = sorted({s[0].indices(size)[:2] for s in slices})
  return np.concatenate([np.arange(lo, hi, dtype=np.int32) for lo, hi in ranges])


def shard(rows_fn: Callable[[Any, jax.Array], dict], args: Any, size: int,
          sharding: NamedSharding) -> dict:
  """Builds a global batch sharded as ``sharding`` from per-slice reads.

  Args:
    rows_fn: ``rows_fn(args, rows) -> batch`` returns the records at rows
      ``rows`` (int32[m]) of the global batch; pure and traceable; a
      module-level function, so multi-process calls compile once.
    args: a pytree of arrays ``rows_fn`` reads (replicated on every device).
    size: global batch size.
    sharding: a ``NamedSharding`` splitting the batch axis.

  Returns:
    The global batch, each leaf of shape ``[size, ...]`` sharded over the
    batch axis.
  """
  axes, count = batch_axes(sharding, size)
  out = batch_sharding(sharding)
  if jax.process_count() == 1:
    local = size // count

    def body(args):
      first = jax.lax.axis_index(axes) * local
      return rows_fn(args, first + jnp.arange(local, dtype=jnp.int32))

    specs = jax.tree.map(lambda _: P(), args)
    return jax.shard_map(body, mesh=sharding.mesh, in_specs=(specs,), out_specs=out.spec)(args)
  if any(isinstance(x, jax.core.Tracer) for x in jax.tree.leaves(args)):
    raise TypeError(
        "Expected to be called outside jit in a multi-process run, got traced arguments;"
        " call next_batch / batch_at with sharding= in Python and pass the global batch"
        " into your jitted step.")
  return assemble(_jitted(rows_fn)(args, process_rows(sharding, size)), size, sharding)


def assemble(local: dict, size: int, sharding: NamedSharding) -> dict:
  """The global batch from this process's rows (``process_rows``) of it."""
  out = batch_sharding(sharding)
  return jax.tree.map(lambda v: jax.make_array_from_process_local_data(out, v, (size,) + v.shape[1:]),
                      local)


def sharded_batch(rows_fn: Callable[[Any, jax.Array], dict], args: Any, size: int,
                  sharding: NamedSharding, data: Mapping[str, jax.Array]) -> dict:
  """:func:`shard`, checked and jitted (one process) or assembled (several).

  ``data`` (the source's arrays) must sit replicated on the mesh's devices
  in a one-process run, so that no batch copies the dataset.
  """
  batch_axes(sharding, size)
  if jax.process_count() > 1:
    return shard(rows_fn, args, size, sharding)
  _check_replicated(data, sharding)
  return _shard_jit(rows_fn, args, size, sharding)


@functools.partial(jax.jit, static_argnames=("rows_fn", "size", "sharding"))
def _shard_jit(rows_fn, args, size, sharding):
  return shard(rows_fn, args, size, sharding)


def _check_replicated(data: Mapping[str, jax.Array], sharding: NamedSharding) -> None:
  mesh_devices = set(sharding.mesh.devices.flat)
  for path, x in jax.tree_util.tree_flatten_with_path(data)[0]:
    key = _features.name(tuple(k.key for k in path))
    if isinstance(x, jax.core.Tracer) or not isinstance(x, jax.Array):
      continue
    if not (x.sharding.is_fully_replicated and set(x.sharding.device_set) >= mesh_devices):
      raise ValueError(
          f"Expected feature {key} replicated on the mesh's {len(mesh_devices)} devices, got"
          f" it on {len(x.sharding.device_set)} device(s) ({x.sharding}); place the source"
          " there once: from_arrays(..., device=NamedSharding(mesh, PartitionSpec())) or"
          " load(..., device=...), so batches never copy the dataset.")


@functools.cache
def _jitted(rows_fn):
  return jax.jit(rows_fn)
