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
import logging
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from tfds_jax import _features
from tfds_jax import _sharding
from tfds_jax import _source
from tfds_jax import _stages
from tfds_jax._array_record import RecordError
from tfds_jax._source import Source, SourceState
from tfds_jax._stages import Stage, chain, record_keys
from tfds_jax._types import Batch

log = logging.getLogger("tfds_jax")


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
    return _source.issue(SourceState(epoch=zero, index=zero, seed=_source.as_seed(seed)),
                         self.num_records)

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
      _source.check_state(state, self.num_records, _source._label(self.source))  # pylint: disable=protected-access
      state = _source.as_arrays(state)
      if sharding is None:  # one dispatch: the batch and the advanced position
        batch, epoch, index = _next((self, state.epoch, state.index, state.seed), size)
      else:
        batch = _batch(self, state.epoch, state.index, state.seed, size, sharding)
        epoch, index = _source.advance(self.num_records, state.epoch, state.index, size)
      return batch, _source.issue(SourceState(epoch=epoch, index=index, seed=state.seed),
                                  self.num_records)
    try:
      raw, new = _source.next_batch(self.source, state._replace(seed=self._order(state.seed)), size,
                                    sharding=sharding)
    except RecordError as e:  # go on from the pipeline's own state (its seed seeds the stages)
      if e.next_state is not None:
        e.next_state = e.next_state._replace(seed=state.seed)
      raise
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


def pipeline(source, *stages: Stage, batch_size: int, shuffle: bool = False,
             check_stages: bool = True) -> Pipeline:
  """Makes a :class:`Pipeline`: batches of ``source`` passed through ``stages``.

  Args:
    source: a :class:`Source` (everything runs inside ``jit``) or a
      :class:`Stream` (read outside, stages jitted).
    *stages: :class:`Stage` objects or plain ``fn(batch) -> batch``
      functions, applied in order (see :func:`chain`).
    batch_size: records per batch, a static int in ``[1, num_records]``.
    shuffle: visit records in the per-epoch shuffled order of the state's
      seed (else sequentially; the seed still drives the random stages).
    check_stages: run the checks below that pass synthetic records through
      the stages (independence, ``one_hot``'s range). False skips them, for
      stages with effects of their own, or to see :mod:`tfds_jax.testing`'s
      assertions catch a broken stage on your real data.

  Returns:
    A :class:`Pipeline`; drive it with ``init`` / ``next_batch`` /
    ``batch_at``.

  Checks made here (on traces and, where the data is at hand, values; the
  last two unless ``check_stages=False``):

  * the stages run on a batch of ``batch_size`` records and keep its size, and
    each returns a non-empty dict (errors of the stages, such as a missing
    feature, surface here);
  * the stages treat records independently: two synthetic records (random
    values of the source's element spec) are passed through the stages
    together and each alone, with the same keys, and must come out the same
    (up to float rounding). A stage that centres on the batch mean, takes a
    batch maximum or draws one random number for the whole batch fails it. It
    cannot see mixing that leaves those two records unchanged (a stage that
    mixes only larger batches, or only some values), and is skipped when the
    batch size is 1 or the stages cannot run on one or two records;
  * a :func:`one_hot` that sees the source's raw labels (no stage of your own
    before it) covers their range: the values of an in-memory source, or the
    ``ClassLabel`` of a stream's dataset info.

  Raises:
    ValueError: a bad batch size; stages that change the batch size, return
      an empty dict or mix records; a ``one_hot`` with too few classes.
    TypeError: a stage that returns something other than a dict.

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
  jax.eval_shape(pipe.stages, *_synthetic(pipe, batch_size, traced=True))  # the real batch size
  if check_stages:
    _check_independent(pipe)
    _check_labels(pipe)
  return pipe


def _synthetic(pipe: Pipeline, size: int, traced: bool = False) -> tuple[jax.Array, Batch]:
  """Keys and ``size`` records of the source's spec: shapes only if ``traced``, else
  random values (the same every time)."""
  spec = _source.element_spec(pipe.source)
  if traced:
    keys = jax.eval_shape(lambda: record_keys(0, 0, 0, size, pipe.num_records))
    return keys, jax.tree.map(lambda v: jax.ShapeDtypeStruct((size, *v.shape), v.dtype), spec)
  keys = record_keys(0, 0, 0, size, pipe.num_records)
  rng = np.random.default_rng(0)
  batch = {}
  for k, v in _features.flatten(spec).items():  # record r in [r, r + 1) * half: their means, minima and maxima differ
    shape, dtype = (size, *v.shape), np.dtype(v.dtype)
    low = np.arange(size).reshape((size,) + (1,) * len(v.shape))
    if dtype == np.bool_:
      batch[k] = rng.integers(0, 2, shape).astype(bool)
    elif np.issubdtype(dtype, np.integer):
      half = max(min(int(np.iinfo(dtype).max), 255) // size, 1)
      batch[k] = (low * half + rng.integers(0, half, shape)).astype(dtype)
    else:
      batch[k] = ((low + rng.uniform(0, 1, shape)) * (255 / size)).astype(dtype)
  return keys, _features.unflatten(batch)


@jax.jit
def _together_and_alone(stages: Stage, keys: jax.Array, batch: Batch):
  alone = [stages(keys[i:i + 1], jax.tree.map(lambda v, i=i: v[i:i + 1], batch)) for i in range(2)]
  return stages(keys, batch), alone


def _check_independent(pipe: Pipeline) -> None:
  """Raises if the stages mix records (see :func:`pipeline`)."""
  if pipe.batch_size < 2 or any(isinstance(x, jax.core.Tracer) for x in jax.tree.leaves(pipe)):
    return
  try:
    together, alone = _together_and_alone(pipe.stages, *_synthetic(pipe, 2))
  except Exception as e:  # pylint: disable=broad-except  # stages made for one batch size only
    log.debug("not checking that the stages treat records independently: %s", e)
    return
  alone = [_features.flatten(one) for one in alone]
  for k, both in _features.flatten(together).items():
    both = np.asarray(both)
    for i, one in enumerate(alone):
      one = np.asarray(one.get(k, np.zeros((0,))))
      if one.shape[1:] != both.shape[1:] or not _close(both[i], one[0]):
        raise ValueError(
            f"Expected stages that treat records independently, got stages whose output for one"
            f" record of {_features.name(k)} depends on the other records of the batch (record {i} of a batch"
            " of two differs from that record alone, with the same keys); compute statistics"
            " over the dataset (compute_statistics) instead of the batch, and draw randomness"
            " from the per-record keys.")


def _close(a: np.ndarray, b: np.ndarray) -> bool:
  if a.dtype.kind not in "fc":
    return np.array_equal(a, b)
  scale = float(np.nanmax(np.abs(a), initial=0.0)) + 1.0
  return np.allclose(a, b, rtol=1e-4, atol=1e-4 * scale, equal_nan=True)


def _check_labels(pipe: Pipeline) -> None:
  """Raises for a one_hot whose num_classes does not cover the raw labels' range."""
  for feature, num_classes in _stages.raw_one_hots(pipe.stages):
    low, high, where = _label_range(pipe.source, feature)
    if high is not None and (low < 0 or high >= num_classes):
      raise ValueError(
          f"Expected one_hot({num_classes}) to cover the labels of {_features.name(_features.as_path(feature))} in"
          f" {_source._label(pipe.source)} ({where}: [{low}, {high}]), got num_classes="  # pylint: disable=protected-access
          f"{num_classes}; pass one_hot({max(high + 1, num_classes)}) (labels outside [0,"
          " num_classes) give all-zero rows).")


def _label_range(source: Any, feature: str) -> tuple[int | None, int | None, str]:
  """The known range of ``feature``'s values: of the data in memory, or of the
  ``ClassLabel`` in the dataset info of a stream (never imports TensorFlow)."""
  if isinstance(source, Source):
    try:
      x = _features.get(source.data, feature)
    except KeyError:
      x = None
    if not isinstance(x, jax.Array) or isinstance(x, jax.core.Tracer) or not jnp.issubdtype(x.dtype, jnp.integer):
      return None, None, ""
    low, high = jax.device_get((jnp.min(x), jnp.max(x)))
    return int(low), int(high), "values"
  from tfds_jax import _tfds  # pylint: disable=import-outside-toplevel
  info = _tfds._INFOS.get(getattr(getattr(source, "info", None), "data_dir", None))  # pylint: disable=protected-access
  node = None if info is None else info.features  # loaded with the stream
  for part in _features.as_path(feature):
    try:
      node = getattr(node, "feature", node)[part]  # a Sequence's fields are its feature's
    except (KeyError, TypeError):
      return None, None, ""
  if type(node).__name__ == "ClassLabel":
    return 0, node.num_classes - 1, "its ClassLabel's range"
  return None, None, ""


def _check_state(state: SourceState) -> None:
  if isinstance(state, SourceState) and state.seed is None:
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
