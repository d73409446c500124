"""Pipelines: a source, its stages and a batch size, driven like a source.

A :class:`Pipeline` is an immutable pytree. ``init``, ``next_batch`` and
``batch_at`` accept it as they accept a :class:`Source`, with the same
:class:`SourceState`; the state's ``seed`` also seeds the stages, and whether
the order is shuffled is fixed when the pipeline is made. Over an in-memory
source the whole batch (gather, then stages) runs inside ``jit``; over a
:class:`Stream` the read happens outside and the stages run jitted.

The invariants of sources hold for pipelines: ``k`` calls of ``next_batch``
from ``init(pipe, seed=s)`` equal ``batch_at(pipe, k * batch_size,
seed=s)``; a restored state resumes exactly; and since each record's
randomness comes from (seed, epoch, position), a batch of 2B records equals
two batches of B, and a sharded batch equals the unsharded one.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import jax
import jax.numpy as jnp

from tfds_jax import _sharding
from tfds_jax import _source
from tfds_jax._source import Source, SourceState
from tfds_jax._stages import Stage, chain, record_keys
from tfds_jax._types import Batch


@dataclasses.dataclass(frozen=True, eq=False)
class Pipeline:
  """A source plus stages plus a batch size; make one with :func:`pipeline`.

  Attributes:
    source: a :class:`Source` (leaves passed into ``jit``) or a :class:`Stream`.
    stages: the composed :class:`Stage` (its arrays are leaves too).
    batch_size: records per batch (static).
    shuffle: whether epochs are shuffled (static).
  """

  source: Any
  stages: Stage
  batch_size: int
  shuffle: bool

  @property
  def num_records(self) -> int:
    """Records in the source."""
    return self.source.num_records

  @property
  def name(self) -> str | None:
    """The source's dataset name."""
    return self.source.name

  @property
  def split(self) -> str | None:
    """The source's split."""
    return self.source.split

  @property
  def info(self) -> Any:
    """The source's dataset info."""
    return self.source.info

  def __repr__(self) -> str:
    return f"Pipeline({self.source!r}, batch_size={self.batch_size}, shuffle={self.shuffle})"

  def init(self, seed, shuffle: bool | None) -> SourceState:
    """See :func:`tfds_jax.init`."""
    if shuffle is not None and shuffle != self.shuffle:
      raise ValueError(
          f"Expected shuffle={self.shuffle} (set when the pipeline was made), got"
          f" shuffle={shuffle}; leave it out, or make the pipeline with shuffle={shuffle}.")
    zero = jnp.zeros((), jnp.int32)
    return SourceState(epoch=zero, index=zero, seed=_source.as_seed(seed))

  def element_spec(self) -> dict[str, jax.ShapeDtypeStruct]:
    """Shape and dtype of one record after the stages (nothing is read)."""
    spec = _source.element_spec(self.source)
    batch = jax.tree.map(lambda v: jax.ShapeDtypeStruct((1,) + v.shape, v.dtype), spec)
    keys = jax.eval_shape(lambda: record_keys(0, 0, 0, 1, self.num_records))
    out = jax.eval_shape(self.stages, keys, batch)
    return jax.tree.map(lambda v: jax.ShapeDtypeStruct(v.shape[1:], v.dtype), out)

  def next_batch(self, state: SourceState, batch_size: int | None = None, *,
                 sharding=None) -> tuple[Batch, SourceState]:
    """See :func:`tfds_jax.next_batch`."""
    size = self._size(batch_size, "batch_size")
    _check_state(state)
    if isinstance(self.source, Source):
      if sharding is None:  # one dispatch: the batch and the advanced position
        batch, epoch, index = _next((self, state.epoch, state.index, state.seed), size)
      else:
        batch = _batch(self, state.epoch, state.index, state.seed, size, sharding)
        epoch, index = _source.advance(self.num_records, state.epoch, state.index, size)
      return batch, SourceState(epoch=epoch, index=index, seed=state.seed)
    raw, new = _source.next_batch(self.source, state._replace(seed=self._order(state.seed)), size,
                                  sharding=sharding)
    return _stage(self.stages, raw, state.epoch, state.index, state.seed, self.num_records), \
        new._replace(seed=state.seed)

  def batch_at(self, start, size: int | None = None, seed=None, *, sharding=None) -> Batch:
    """See :func:`tfds_jax.batch_at`; ``seed=None`` means seed 0, as ``init``'s default."""
    size = self._size(size, "size")
    seed = _source.as_seed(0 if seed is None else seed)
    if isinstance(self.source, Source):
      epoch, index = _source.position(start, self.num_records)
      return _batch(self, epoch, index, seed, size, sharding)
    raw = _source.batch_at(self.source, start, size, self._order(seed), sharding=sharding)
    epoch, index = divmod(int(start), self.num_records)
    return _stage(self.stages, raw, epoch % 2**32, index, seed, self.num_records)

  def _size(self, size: int | None, what: str) -> int:
    if size is not None and size != self.batch_size:
      raise ValueError(
          f"Expected {what}={self.batch_size} (the pipeline's batch size) or None, got {size};"
          " make another pipeline for another batch size.")
    return self.batch_size

  def _order(self, seed):
    return seed if self.shuffle else None


jax.tree_util.register_dataclass(
    Pipeline, data_fields=["source", "stages"], meta_fields=["batch_size", "shuffle"])


def pipeline(source, *stages: Stage, batch_size: int, shuffle: bool = False) -> Pipeline:
  """Makes a :class:`Pipeline`: batches of ``source`` passed through ``stages``.

  Args:
    source: a :class:`Source` (everything runs inside ``jit``) or a
      :class:`Stream` (read outside, stages jitted).
    *stages: :class:`Stage` objects or plain ``fn(batch) -> batch``
      functions, applied in order (see :func:`chain`).
    batch_size: records per batch, a static int in ``[1, num_records]``.
    shuffle: visit records in the per-epoch shuffled order of the state's
      seed (else sequentially; the seed still drives the random stages).

  Returns:
    A :class:`Pipeline`; drive it with ``init`` / ``next_batch`` /
    ``batch_at``.

  Raises:
    ValueError: for a bad batch size; errors of the stages (a missing
      feature, say) surface here, from a trace of one record.

  Example:
    >>> import numpy as np, tfds_jax
    >>> src = tfds_jax.from_arrays({"image": np.zeros((10, 4, 4, 1), np.uint8),
    ...                             "label": np.arange(10) % 3})
    >>> pipe = tfds_jax.pipeline(src, tfds_jax.to_float(), tfds_jax.random_flip(),
    ...                          tfds_jax.one_hot(3), batch_size=4, shuffle=True)
    >>> state = tfds_jax.init(pipe, seed=0)
    >>> batch, state = tfds_jax.next_batch(pipe, state)
    >>> batch["image"].dtype, batch["label"].shape
    (dtype('float32'), (4, 3))
  """
  if isinstance(source, Pipeline):
    raise TypeError("Expected a Source or Stream, got a Pipeline; pass its stages to one"
                    " pipeline: pipeline(source, *stages_a, *stages_b, ...).")
  n = source.num_records if hasattr(source, "num_records") else None
  if n is None:
    raise TypeError(f"Expected a Source or Stream, got {type(source).__name__}; make one with"
                    " from_arrays, load or stream.")
  _source._check_batch_size(n, batch_size)  # pylint: disable=protected-access
  pipe = Pipeline(source=source, stages=chain(*stages), batch_size=batch_size, shuffle=bool(shuffle))
  pipe.element_spec()  # fail now, on a trace, if the stages do not fit the data
  return pipe


def _check_state(state: SourceState) -> None:
  if state.seed is None:
    raise ValueError("Expected a state made by init(pipeline, seed=...), got one with seed=None"
                     " (made by init(source)); call init on the pipeline.")


def _rows(args: tuple, rows: jax.Array) -> Batch:
  """Rows ``rows`` of the pipeline's batch at (epoch, index), stages applied."""
  pipe, epoch, index, seed = args
  raw = _source.gather_rows((pipe.source.data, epoch, index, pipe._order(seed)), rows)  # pylint: disable=protected-access
  keys = record_keys(seed, epoch, index, rows, pipe.num_records)
  return pipe.stages(keys, raw)


def _batch(pipe: Pipeline, epoch, index, seed, size: int, sharding) -> Batch:
  args = (pipe, epoch, index, seed)
  if sharding is None:
    return _whole(args, size)
  return _sharding.sharded_batch(_rows, args, size, sharding, pipe.source.data)


@functools.partial(jax.jit, static_argnames="size")
def _whole(args, size):
  return _rows(args, jnp.arange(size, dtype=jnp.int32))


@functools.partial(jax.jit, static_argnames="size")
def _next(args, size):
  pipe, epoch, index, _ = args
  return (_whole(args, size), *_source.advance(pipe.num_records, epoch, index, size))


@functools.partial(jax.jit, static_argnums=5)
def _stage(stages: Stage, batch: Batch, epoch, index, seed, n: int) -> Batch:
  size = jax.tree.leaves(batch)[0].shape[0]
  return stages(record_keys(seed, epoch, index, size, n), batch)
