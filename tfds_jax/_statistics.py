"""Dataset statistics: per-feature, per-channel mean, std, min and max.

:func:`compute_statistics` reads a source once, in one jitted pass for an
in-memory :class:`Source` (a ``lax.fori_loop`` over chunks), merging chunk
moments with Chan et al.'s parallel update so float32 stays accurate on
millions of records. The result is a :class:`Statistics` pytree: it saves with
the state (``np.savez``, orbax, pickle) and feeds :func:`normalize`.
"""

from __future__ import annotations

import functools
from typing import Iterable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from tfds_jax import _features
from tfds_jax import _source
from tfds_jax._pipeline import Pipeline
from tfds_jax._types import Batch


class Statistics(NamedTuple):
  """Per-feature statistics; each field maps a feature name to an array
  (nested dicts for nested features, as in the source).

  Arrays are ``float32[C]`` (per channel: the record's last axis) or
  ``float32[]`` for scalar features and when ``per_channel=False``.
  """

  mean: dict[str, jax.Array]  # float32[C] or []: mean over records and all other axes.
  std: dict[str, jax.Array]  # float32[C] or []: population standard deviation.
  min: dict[str, jax.Array]  # float32[C] or []: smallest value.
  max: dict[str, jax.Array]  # float32[C] or []: largest value.
  count: jax.Array  # int32[]: records read.


class _Moments(NamedTuple):
  n: jax.Array  # float32[]: values per channel so far.
  mean: dict[str, jax.Array]
  m2: dict[str, jax.Array]  # sum of squared deviations from the mean
  min: dict[str, jax.Array]
  max: dict[str, jax.Array]
  nan: dict[str, jax.Array]  # int32[]: NaN values seen
  inf: dict[str, jax.Array]  # int32[]: infinite values seen


def compute_statistics(
    source,
    *,
    features: Iterable[str] | None = None,
    per_channel: bool = True,
    chunk_size: int = 4096,
) -> Statistics:
  """Computes mean, std, min and max of each feature over one full epoch.

  Args:
    source: a :class:`Source` (one jitted pass), a dict of arrays, a
      :class:`Stream` (read batch by batch, in file order) or a
      :class:`Pipeline` (statistics of its source, before the stages).
    features: names to summarize (default: every feature); a nested feature
      by its path, e.g. ``[("objects", "bbox")]``. The statistics are nested
      as the features are.
    per_channel: keep the record's last axis (``[H, W, C]`` images give
      ``[C]``); else one value per feature. Scalar features give scalars.
    chunk_size: records per step of the pass (clipped to the dataset size).

  Returns:
    A :class:`Statistics` pytree.

  Raises:
    KeyError: for a feature the source does not have.
    ValueError: a feature holds NaN or infinite values (they would make its
      statistics, and every batch normalized with them, NaN): the message
      names each such feature with its counts; clean the data, or leave the
      feature out with ``features=``. Also for ``chunk_size < 1``.

  Example:
    >>> import numpy as np, tfds_jax
    >>> src = tfds_jax.from_arrays({"x": np.array([[0.0, 10.0], [2.0, 30.0]])})
    >>> stats = tfds_jax.compute_statistics(src)
    >>> stats.mean["x"].tolist(), stats.std["x"].tolist()
    ([1.0, 20.0], [1.0, 10.0])
  """
  if (isinstance(chunk_size, (bool, np.bool_)) or not isinstance(chunk_size, (int, np.integer))
      or chunk_size < 1):
    raise ValueError(f"Expected chunk_size to be a positive int, got {chunk_size!r}; pass the"
                     " records per step of the pass (default 4096).")
  if isinstance(source, Pipeline):
    source = source.source
  spec = _source.element_spec(source)
  names = list(spec) if features is None else [features] if isinstance(features, str) else list(features)
  try:
    if not names:
      raise KeyError(names)
    _features.select(spec, names)
  except (KeyError, TypeError):
    raise KeyError(f"Expected features among {sorted(spec)} (nested ones by path, e.g."
                   f" ('objects', 'bbox')), got {names}; pass features= naming some of them.") from None
  n = source.num_records if hasattr(source, "num_records") else _source._num_records(source)  # pylint: disable=protected-access
  chunk = min(chunk_size, n)
  if _source._has_methods(source):  # pylint: disable=protected-access
    # a Stream: one epoch in file order, through either reader
    total, state = None, _source.init(source)
    for size in [chunk] * (n // chunk) + ([n % chunk] if n % chunk else []):
      batch, state = _source.next_batch(source, state, size)
      total = _merge_batch(total, _features.select(batch, names), per_channel)
  else:
    data = source.data if isinstance(source, _source.Source) else source
    total = _pass(_features.select(data, names), chunk, per_channel)
  counts = _features.flatten(jax.device_get({"nan": total.nan, "inf": total.inf}))
  flat_spec = _features.flatten(spec)
  bad = {p[1:]: (int(counts[("nan",) + p[1:]]), int(counts[("inf",) + p[1:]]))
         for p in counts if p[0] == "nan" and (counts[p] or counts[("inf",) + p[1:]])}
  if bad:
    raise ValueError(
        f"Expected finite values in [{', '.join(map(_features.name, sorted(bad)))}] of"
        f" {_source._label(source)},"  # pylint: disable=protected-access
        " got " + ", ".join(f"{_features.name(k)}: {nan} NaN and {inf} infinite of"
                            f" {n * _values(flat_spec[k])}" for k, (nan, inf) in sorted(bad.items()))
        + "; clean those records (or replace the values), or leave the feature out with"
        " features=[...].")
  return _finish(total, n)


def _values(spec: jax.ShapeDtypeStruct) -> int:
  return int(np.prod(spec.shape, dtype=np.int64))


@functools.partial(jax.jit, static_argnames=("chunk", "per_channel"))
def _pass(data: Batch, chunk: int, per_channel: bool) -> _Moments:
  n = _source._num_records(data)  # pylint: disable=protected-access
  steps, tail = divmod(n, chunk)

  def body(i, total):
    part = jax.tree.map(lambda v: jax.lax.dynamic_slice_in_dim(v, i * chunk, chunk), data)
    return _merge(total, _moments(part, per_channel))

  total = jax.lax.fori_loop(1, steps, body, _moments(
      jax.tree.map(lambda v: v[:chunk], data), per_channel))
  if tail:
    total = _merge(total, _moments(jax.tree.map(lambda v: v[n - tail:], data), per_channel))
  return total


@functools.partial(jax.jit, static_argnames="per_channel")
def _merge_batch(total: _Moments | None, batch: Batch, per_channel: bool) -> _Moments:
  part = _moments(batch, per_channel)
  return part if total is None else _merge(total, part)


def _axes(x: jax.Array, per_channel: bool) -> tuple[int, ...]:
  keep_last = per_channel and x.ndim > 1
  return tuple(range(x.ndim - 1 if keep_last else x.ndim))


def _moments(batch: Batch, per_channel: bool) -> _Moments:
  """Moments of one chunk. ``m2`` is in per-record units (the sum of squared
  deviations divided by the values per record and channel), so chunks merge
  exactly by record counts."""

  def one(v):
    axes = _axes(v, per_channel)
    x = v.astype(jnp.float32)
    floating = jnp.issubdtype(v.dtype, jnp.inexact)  # integers are always finite
    nan = jnp.sum(jnp.isnan(x), dtype=jnp.int32) if floating else jnp.int32(0)
    inf = jnp.sum(jnp.isinf(x), dtype=jnp.int32) if floating else jnp.int32(0)
    centre = jnp.mean(x, axis=axes, keepdims=True)
    values_per_record = int(np.prod([v.shape[a] for a in axes[1:]], dtype=np.int64))
    return (jnp.squeeze(centre, axis=axes), jnp.sum(jnp.square(x - centre), axis=axes) / values_per_record,
            jnp.min(x, axis=axes), jnp.max(x, axis=axes), nan, inf)

  leaves, tree = jax.tree.flatten(batch)
  fields = [jax.tree.unflatten(tree, list(f)) for f in zip(*[one(v) for v in leaves])]
  return _Moments(jnp.float32(leaves[0].shape[0]), *fields)


def _merge(a: _Moments, b: _Moments) -> _Moments:
  """Chan et al.'s parallel update of (count, mean, M2)."""
  n = a.n + b.n
  delta = jax.tree.map(jnp.subtract, b.mean, a.mean)
  mean = jax.tree.map(lambda m, d: m + d * (b.n / n), a.mean, delta)
  m2 = jax.tree.map(lambda x, y, d: x + y + jnp.square(d) * (a.n * b.n / n), a.m2, b.m2, delta)
  return _Moments(n, mean, m2, jax.tree.map(jnp.minimum, a.min, b.min),
                  jax.tree.map(jnp.maximum, a.max, b.max), jax.tree.map(jnp.add, a.nan, b.nan),
                  jax.tree.map(jnp.add, a.inf, b.inf))


def _finish(total: _Moments, n: int) -> Statistics:
  std = jax.tree.map(lambda m2: jnp.sqrt(m2 / n), total.m2)
  return Statistics(mean=total.mean, std=std, min=total.min, max=total.max,
                    count=jnp.asarray(n, jnp.int32))
