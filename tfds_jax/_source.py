"""The functional source: an immutable pytree of arrays and pure batch functions.

A :class:`Source` holds a dataset as arrays whose leading axis is the record.
Iteration state lives apart, in a small :class:`SourceState` pytree, and every
operation is a pure function, so all of it composes with ``jit``, ``vmap``,
``lax.scan`` and ``lax.fori_loop``.

Positions: a run is an endless sequence of epochs. Logical position ``p`` is
record ``i`` of epoch ``e`` with ``(e, i) = divmod(p, n)``. Unshuffled, that is
record ``i``; shuffled with seed ``s``, it is record
``index_shuffle(i, (s + e) mod 2**32, n - 1)``, which is exactly the order of
``grain.MapDataset.source(records).shuffle(seed=s)``.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Mapping, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from tfds_jax import _features
from tfds_jax import _sharding
from tfds_jax import _shuffle
from tfds_jax._types import Batch

_U32 = jnp.uint32
_MAX_RECORDS = 2**31 - 1


@dataclasses.dataclass(frozen=True, repr=False)
class Source:
  """An immutable dataset: arrays with one record per row, plus static metadata.

  A pytree whose only leaves are the arrays in ``data``; ``name``, ``split`` and
  ``info`` are static metadata, and so is ``num_records`` (the leading axis).
  Pass a source into jitted functions as an argument, never close over it.

  Attributes:
    data: feature name -> array of shape ``[num_records, ...]``, or a nested
      dict of them (a TFDS Sequence's fields, a ``FeaturesDict``), as TFDS
      nests them.
    name: dataset name (for example ``"mnist"``), or None.
    split: split string (for example ``"train[:10%]"``), or None.
    info: the TFDS ``DatasetInfo``, or None for sources built from arrays.
  """

  data: Batch
  name: str | None = None
  split: str | None = None
  info: Any = None

  @property
  def num_records(self) -> int:
    """Number of records: the leading axis of every array in ``data``."""
    return _num_records(self.data)

  def __repr__(self) -> str:
    spec = jax.tree.map(lambda v: f"{v.dtype}{list(v.shape[1:])}", self.data)
    where = f"{self.name}[{self.split}], " if self.name else ""
    return f"Source({where}num_records={self.num_records}, data={spec})"


jax.tree_util.register_dataclass(
    Source, data_fields=["data"], meta_fields=["name", "split", "info"]
)


class SourceState(NamedTuple):
  """Where a run stands: the next record to read and the shuffle seed.

  ``seed`` is a Grain-compatible uint32 seed, not a ``jax.random`` key (a key
  given to :func:`init` is turned into one); ``None`` means sequential order.
  """

  epoch: jax.Array  # int32[]: epochs completed so far.
  index: jax.Array  # int32[]: position of the next record within the epoch.
  seed: jax.Array | None  # uint32[]: seed of epoch 0 (epoch e uses seed + e); None if unshuffled.


def _num_records(data: Mapping[str, Any]) -> int:
  return jax.tree.leaves(data)[0].shape[0]


def _path_name(path) -> str:
  """A feature as messages name it: ``'image'``, or ``('objects', 'bbox')`` when nested."""
  return _features.name(tuple(k.key for k in path))


def from_arrays(
    arrays: Mapping[str, jax.typing.ArrayLike],
    *,
    name: str | None = None,
    split: str | None = None,
    info: Any = None,
    device: jax.Device | jax.sharding.Sharding | None = None,
) -> Source:
  """Makes a :class:`Source` from a dict of arrays sharing their leading axis.

  Args:
    arrays: feature name -> array of shape ``[num_records, ...]`` (numpy or
      JAX, numeric or bool), or a nested dict of them.
    name: optional dataset name kept as metadata.
    split: optional split name kept as metadata.
    info: optional TFDS ``DatasetInfo`` kept as metadata.
    device: where to place the arrays (default: JAX's default device).

  Returns:
    A :class:`Source` holding the arrays as ``jax.Array``.

  Raises:
    ValueError: if ``arrays`` is empty, a feature is a scalar, the leading axes
      differ, or there are no records.
    TypeError: if a key is not a string or a feature is not numeric.

  Example:
    >>> import numpy as np
    >>> import tfds_jax
    >>> src = tfds_jax.from_arrays({"x": np.zeros((10, 3)), "y": np.arange(10)})
    >>> src.num_records
    10
  """
  if not isinstance(arrays, Mapping) or not arrays:
    raise ValueError(
        f"Expected a non-empty dict of feature name -> array, got {arrays!r};"
        " pass for example {'image': images, 'label': labels}."
    )
  arrays = _as_arrays(arrays)
  lengths = {}
  for path, value in jax.tree_util.tree_flatten_with_path(arrays)[0]:
    key = _path_name(path)
    dtype = value.dtype
    if not (np.issubdtype(dtype, np.number) or np.issubdtype(dtype, np.bool_)):
      raise TypeError(
          f"Expected a numeric or bool array for feature {key}, got dtype"
          f" {dtype}; JAX arrays hold numbers only: encode it as integer ids or"
          " leave it out."
      )
    shape = value.shape
    if not shape:
      raise ValueError(
          f"Expected feature {key} to have a leading record axis, got a scalar;"
          " give it shape [num_records, ...]."
      )
    keys = tuple(k.key for k in path)
    lengths[keys[0] if len(keys) == 1 else keys] = shape[0]
  if len(set(lengths.values())) > 1:
    raise ValueError(
        f"Expected every feature to have the same number of records (leading"
        f" axis), got {lengths}; slice them to a common length."
    )
  n = next(iter(lengths.values()))
  if not 0 < n <= _MAX_RECORDS:
    raise ValueError(
        f"Expected between 1 and 2**31 - 1 records, got {n}; give at least one"
        " record, or shard larger datasets."
    )
  data = jax.tree.map(lambda v: jax.device_put(v, device), arrays)
  return Source(data=data, name=name, split=split, info=info)


def _as_arrays(tree: Mapping[str, Any]) -> dict[str, Any]:
  """A nested dict of numpy or JAX arrays; keys must be strings, dicts non-empty."""
  out = {}
  for key, value in tree.items():
    if not isinstance(key, str):
      raise TypeError(f"Expected feature names to be str, got {key!r}; rename it.")
    if isinstance(value, Mapping):
      if not value:
        raise ValueError(f"Expected feature {key!r} to hold arrays, got an empty dict; leave it out.")
      out[key] = _as_arrays(value)
    else:
      out[key] = value if isinstance(value, jax.Array) else np.asarray(value)
  return out


def element_spec(source: Source | Mapping[str, jax.Array]) -> dict[str, jax.ShapeDtypeStruct]:
  """Returns the shape and dtype of one record, per feature.

  Args:
    source: a :class:`Source`, a dict of arrays with a leading record axis, or
      a :class:`Stream`.

  Returns:
    feature name -> ``jax.ShapeDtypeStruct`` of a single record (nested as
    the data is).

  Example:
    >>> import numpy as np, tfds_jax
    >>> tfds_jax.element_spec(tfds_jax.from_arrays({"x": np.zeros((4, 2), np.float32)}))
    {'x': ShapeDtypeStruct(shape=(2,), dtype=float32)}
  """
  if _has_methods(source):
    return source.element_spec()
  data = source.data if isinstance(source, Source) else source
  return jax.tree.map(lambda v: jax.ShapeDtypeStruct(v.shape[1:], v.dtype), data)


def _has_methods(source: Any) -> bool:
  """Streams and pipelines carry their own ``next_batch`` / ``batch_at`` methods."""
  return not isinstance(source, (Source, Mapping)) and hasattr(source, "next_batch")


def as_seed(seed: int | jax.typing.ArrayLike) -> jax.Array:
  """Turns an int seed or a JAX key into a uint32 shuffle seed.

  Args:
    seed: a Python int in ``[0, 2**32)``, an integer scalar array (used modulo
      ``2**32``), or a ``jax.random`` key (typed, or raw uint32[2]) from which
      32 random bits are drawn.

  Returns:
    A uint32[] array.

  Raises:
    ValueError: for an int outside ``[0, 2**32)`` or an array of another shape.

  Example:
    >>> import jax, tfds_jax
    >>> int(tfds_jax.as_seed(7))
    7
    >>> tfds_jax.as_seed(jax.random.key(0)).dtype
    dtype('uint32')
  """
  if isinstance(seed, (bool, np.bool_)):
    raise TypeError(f"Expected an int seed or a JAX key, got {seed!r}.")
  if isinstance(seed, (int, np.integer)):
    if not 0 <= int(seed) < 2**32:
      raise ValueError(
          f"Expected a seed in [0, 2**32), got {seed}; reduce it modulo 2**32,"
          " as Grain requires the same range."
      )
    return jnp.asarray(int(seed), dtype=_U32)
  seed = jnp.asarray(seed) if not isinstance(seed, jax.Array) else seed
  if jax.dtypes.issubdtype(seed.dtype, jax.dtypes.prng_key):
    if seed.shape:
      raise ValueError(
          f"Expected a single JAX key, got a key array of shape {seed.shape};"
          " vmap over the keys instead."
      )
    return jax.random.bits(seed, (), _U32)
  if seed.dtype == jnp.uint32 and seed.shape == (2,):
    return jax.random.bits(seed, (), _U32)
  if jnp.issubdtype(seed.dtype, jnp.integer) and seed.shape == ():
    return seed.astype(_U32)
  raise ValueError(
      f"Expected an int seed, an integer scalar or a JAX key, got an array of"
      f" dtype {seed.dtype} and shape {seed.shape}; vmap over seeds or keys to"
      " run several at once."
  )


def init(
    source: Source | Mapping[str, jax.Array],
    *,
    seed: int | jax.typing.ArrayLike = 0,
    shuffle: bool | None = None,
) -> SourceState:
  """Returns the state at the start of epoch 0.

  Args:
    source: the :class:`Source` to iterate (only its size is read), or a
      :class:`Stream` or :class:`Pipeline`.
    seed: a Python int in ``[0, 2**32)``, an integer scalar array or a
      ``jax.random`` key; ignored when ``shuffle`` is False (a pipeline keeps
      it for its random stages).
    shuffle: visit records in a per-epoch pseudo-random order (Grain's
      ``MapDataset.shuffle(seed)`` order) instead of sequentially. Default:
      False, or what the pipeline was made with.

  Returns:
    A :class:`SourceState` with ``epoch = index = 0``.

  Example:
    >>> import numpy as np, tfds_jax
    >>> src = tfds_jax.from_arrays({"x": np.arange(10)})
    >>> state = tfds_jax.init(src, seed=42, shuffle=True)
    >>> int(state.epoch), int(state.index), int(state.seed)
    (0, 0, 42)
  """
  if _has_methods(source) and hasattr(source, "init"):
    return source.init(seed, shuffle)
  zero = jnp.zeros((), jnp.int32)
  return SourceState(epoch=zero, index=zero, seed=as_seed(seed) if shuffle else None)


def _check_batch_size(n: int, batch_size: Any, what: str = "batch_size") -> None:
  if isinstance(batch_size, jax.core.Tracer) or not isinstance(batch_size, (int, np.integer)):
    raise TypeError(
        f"Expected {what} to be a static Python int, got {type(batch_size).__name__};"
        " mark it static: jax.jit(f, static_argnames='batch_size')."
    )
  if not 1 <= batch_size <= n:
    raise ValueError(
        f"Expected 1 <= {what} <= {n} (the number of records), got {batch_size};"
        " use a smaller batch, or a larger dataset or split."
    )


def record_indices(
    num_records: int,
    epoch: jax.typing.ArrayLike,
    index: jax.typing.ArrayLike,
    size: int,
    seed: jax.Array | None,
) -> jax.Array:
  """Returns which records make up ``size`` positions starting at (epoch, index).

  The single path from positions to records that every reader shares. The
  positions that run past the end of epoch ``e`` continue at the start of epoch
  ``e + 1``, in epoch ``e + 1``'s order.

  Args:
    num_records: dataset size ``n`` (static).
    epoch: int scalar, the epoch of the first position.
    index: int scalar in ``[0, n)``, the first position within that epoch.
    size: number of positions, ``1 <= size <= n`` (static).
    seed: uint32[] seed of epoch 0, or None for sequential order.

  Returns:
    int32[size] record indices.

  Example:
    >>> import tfds_jax
    >>> tfds_jax.record_indices(5, 0, 3, 4, None).tolist()
    [3, 4, 0, 1]
  """
  _check_batch_size(num_records, size, "size")
  return indices_at(num_records, epoch, index, jnp.arange(size, dtype=jnp.int32), seed)


def indices_at(
    num_records: int,
    epoch: jax.typing.ArrayLike,
    index: jax.typing.ArrayLike,
    offsets: jax.Array,
    seed: jax.Array | None,
) -> jax.Array:
  """Records at positions ``index + offsets`` of epoch ``epoch`` (offsets < n).

  The positions that run past the end of epoch ``e`` continue at the start of
  epoch ``e + 1``, in its order. Used for whole batches and for the slice of a
  batch one device or process reads.

  Returns:
    int32 record indices, shaped like ``offsets``.
  """
  n = _U32(num_records)
  j = jnp.asarray(index).astype(_U32) + jnp.asarray(offsets).astype(_U32)
  wrapped = j >= n
  pos = jnp.where(wrapped, j - n, j)
  if seed is None:
    return pos.astype(jnp.int32)
  # A batch spans at most two epochs: derive both epochs' round keys once.
  seed0 = jnp.asarray(seed).astype(_U32) + jnp.asarray(epoch).astype(_U32)
  keys0 = _shuffle.round_keys(seed0)
  keys1 = _shuffle.round_keys(seed0 + _U32(1))
  keys = [jnp.where(wrapped, k1, k0) for k0, k1 in zip(keys0, keys1)]
  return _shuffle.permute(pos, keys, num_records - 1).astype(jnp.int32)


@functools.partial(jax.jit, static_argnames="size")
def _gather(data: Mapping[str, jax.Array], epoch, index, size: int, seed) -> Batch:
  return gather_rows((data, epoch, index, seed), jnp.arange(size, dtype=jnp.int32))


def gather_rows(args: tuple, rows: jax.Array) -> Batch:
  """Rows ``rows`` of the batch at (epoch, index): ``args = (data, epoch, index, seed)``."""
  data, epoch, index, seed = args
  records = indices_at(_num_records(data), epoch, index, rows, seed)
  return jax.tree.map(lambda v: take_rows(v, records), data)


def sharded(args: tuple, size: int, sharding: jax.sharding.NamedSharding) -> Batch:
  """The batch of ``size`` rows at (epoch, index) sharded as ``sharding``.

  Each device (each process) gathers only its own rows. ``args = (data,
  epoch, index, seed)``; ``data`` must sit replicated on the mesh's devices.
  """
  return _sharding.sharded_batch(gather_rows, args, size, sharding, args[0])


def take_rows(x: jax.Array, rows: jax.Array) -> jax.Array:
  """Gathers whole records: ``x[rows]`` for in-range ``rows``.

  Records are flattened to one row each first; XLA's CPU gather of contiguous
  rows is markedly faster than of multi-axis slices (see benchmarks/core.py).
  """
  if x.ndim == 1:
    return x.at[rows].get(mode="promise_in_bounds")
  flat = x.reshape(x.shape[0], -1).at[rows].get(mode="promise_in_bounds")
  return flat.reshape(rows.shape + x.shape[1:])


def batch_at(
    data: Source | Mapping[str, jax.Array],
    start: jax.typing.ArrayLike,
    size: int | None = None,
    seed: int | jax.typing.ArrayLike | None = None,
    *,
    sharding: jax.sharding.NamedSharding | None = None,
) -> Batch:
  """Returns the ``size`` records at logical positions ``start, start + 1, ...``.

  Stateless: position ``p`` is record ``i`` of epoch ``e``, ``(e, i) =
  divmod(p, n)``; sequential when ``seed`` is None, else record
  ``index_shuffle(i, (seed + e) mod 2**32, n - 1)``. ``k`` calls of
  :func:`next_batch` from ``init(..., seed=s, shuffle=True)`` return exactly
  ``batch_at(data, k * batch_size, batch_size, state.seed)``.

  Args:
    data: a :class:`Source`, a dict of arrays with a leading record axis, or a
      random-access :class:`Stream` (read from disk, outside ``jit``).
    start: the first logical position: a Python int of any size, or an integer
      scalar array (may be traced; with x64 disabled it must stay below
      ``2**31``, so for very long runs pass the int or use :func:`next_batch`).
    size: records per batch, a static Python int with ``1 <= size <= n`` (a
      :class:`Pipeline` knows its own; pass it or leave it out).
    seed: None for sequential order; else an int seed, a uint32 scalar (such as
      ``state.seed``) or a JAX key. ``vmap`` over ``start`` and ``seed`` works.
    sharding: optional ``NamedSharding`` splitting the batch axis over a mesh
      (``PartitionSpec('data')``): the batch comes back sharded, equal element
      for element to the unsharded one, and each device (each process, under
      ``jax.distributed``) gathers only its own rows. The data must sit
      replicated on the mesh's devices.

  Returns:
    feature name -> array of shape ``[size, ...]``.

  Raises:
    ValueError: if ``size`` is not in ``[1, n]`` or a Python-int ``start`` is
      negative, or ``sharding`` does not divide the batch.

  Example:
    >>> import numpy as np, tfds_jax
    >>> src = tfds_jax.from_arrays({"x": np.arange(5)})
    >>> tfds_jax.batch_at(src, 3, 4)["x"].tolist()
    [3, 4, 0, 1]
  """
  if _has_methods(data):
    return data.batch_at(start, size, seed, sharding=sharding)
  arrays = data.data if isinstance(data, Source) else data
  n = _num_records(arrays)
  epoch, index = position(start, n)
  _check_batch_size(n, size, "size")
  seed = None if seed is None else as_seed(seed)
  if sharding is not None:
    return sharded((arrays, epoch, index, seed), size, sharding)
  return _gather(arrays, epoch, index, size, seed)


def position(start: jax.typing.ArrayLike, n: int) -> tuple[jax.Array, jax.Array]:
  """(epoch, index) of logical position ``start``: ``divmod(start, n)``.

  A Python int may be of any size (the epoch is kept modulo ``2**32``, as the
  shuffle seeds are); a traced one must fit the integer dtype.
  """
  if isinstance(start, (int, np.integer)):
    if start < 0:
      raise ValueError(f"Expected start >= 0, got {start}; positions count from 0.")
    epoch, index = divmod(int(start), n)
    return jnp.asarray(epoch % 2**32, dtype=_U32), jnp.asarray(index, jnp.int32)
  start = jnp.asarray(start)
  return start // n, start % n


def next_batch(
    source: Source | Mapping[str, jax.Array],
    state: SourceState,
    batch_size: int | None = None,
    *,
    sharding: jax.sharding.NamedSharding | None = None,
) -> tuple[Batch, SourceState]:
  """Returns the next ``batch_size`` records and the advanced state.

  Pure: the same state always gives the same batch. Every batch has exactly
  ``batch_size`` records; one that crosses the end of an epoch takes the tail of
  epoch ``e`` in its order and the head of epoch ``e + 1`` in that epoch's order,
  and ``epoch`` / ``index`` advance accordingly. Its work is jitted
  with ``batch_size`` static, so eager calls compile once per shape; inside
  your own ``jit``, ``lax.scan`` or ``lax.fori_loop`` it is inlined and traces
  once.

  A :class:`Stream` is accepted too: it reads the batch from disk (outside
  ``jit``), with the same state and the same promise.

  Args:
    source: the :class:`Source` (or dict of arrays, or :class:`Stream`) to read.
    state: the current :class:`SourceState`, from :func:`init` or a previous call.
    batch_size: records per batch, a static Python int in ``[1, num_records]``
      (a :class:`Pipeline` knows its own; pass it or leave it out).
    sharding: optional ``NamedSharding`` splitting the batch axis, as for
      :func:`batch_at`: each device (each process) gathers only its rows.

  Returns:
    ``(batch, new_state)``: feature name -> ``[batch_size, ...]`` array, and the
    state after those records.

  Raises:
    ValueError: if ``batch_size`` exceeds the number of records.

  Example:
    >>> import numpy as np, tfds_jax
    >>> src = tfds_jax.from_arrays({"x": np.arange(5)})
    >>> state = tfds_jax.init(src)
    >>> batch, state = tfds_jax.next_batch(src, state, 4)
    >>> batch, state = tfds_jax.next_batch(src, state, 4)
    >>> batch["x"].tolist(), int(state.epoch), int(state.index)
    ([4, 0, 1, 2], 1, 3)
  """
  if _has_methods(source):
    return source.next_batch(state, batch_size, sharding=sharding)
  arrays = source.data if isinstance(source, Source) else source
  n = _num_records(arrays)
  _check_batch_size(n, batch_size)
  if sharding is None:
    batch, epoch, index = _next(arrays, state.epoch, state.index, batch_size, state.seed)
  else:
    batch = sharded((arrays, state.epoch, state.index, state.seed), batch_size, sharding)
    epoch, index = advance(n, state.epoch, state.index, batch_size)
  return batch, SourceState(epoch=epoch, index=index, seed=state.seed)


@functools.partial(jax.jit, static_argnames="batch_size")
def _next(data, epoch, index, batch_size, seed):
  batch = _gather(data, epoch, index, batch_size, seed)
  return (batch, *advance(_num_records(data), epoch, index, batch_size))


@functools.partial(jax.jit, static_argnums=(0, 3))
def advance(n: int, epoch, index, size: int) -> tuple[jax.Array, jax.Array]:
  """(epoch, index) after ``size`` more positions: int32 scalars (jitted: one
  dispatch when called eagerly, inlined inside ``jit``)."""
  advanced = jnp.asarray(index).astype(_U32) + _U32(size)
  wrapped = advanced >= _U32(n)
  epoch = (epoch + wrapped).astype(jnp.int32)
  return epoch, jnp.where(wrapped, advanced - _U32(n), advanced).astype(jnp.int32)
