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

States are checked wherever their values are concrete (eager calls): an
``index`` outside ``[0, n)``, a negative ``epoch`` (or one beyond int32), a
seed outside ``[0, 2**32)`` or a non-integer dtype is an error. Inside ``jit`` nothing can raise, so the index math is total instead: a
traced state ``(epoch, index)`` is read as ``(epoch, index mod n)`` (Python's
modulo: a negative index counts from the end of the epoch), the returned state
is that position advanced (valid from then on), and a read never leaves the
data and never hangs. Dtypes are static, so a float state is an error even
under ``jit``.
"""

from __future__ import annotations

import dataclasses
import functools
import weakref
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


def _arrays(source: Any) -> Mapping[str, jax.Array]:
  """The arrays of a :class:`Source` or of a dict of arrays; a clear error for anything else."""
  if isinstance(source, Source):
    return _same_length(source.data)
  if (isinstance(source, Mapping) and source
      and all(getattr(v, "ndim", 0) >= 1 for v in jax.tree.leaves(source))):
    return _same_length(source)
  raise TypeError(
      f"Expected a Source, Pipeline or Stream (or a dict of arrays with a leading record axis),"
      f" got {_describe(source)}; make a source with tfds_jax.from_arrays({{'x': array}}),"
      " load or stream.")


def _same_length(data: Mapping[str, Any]) -> Mapping[str, Any]:
  """``data``, whose arrays must share their leading (record) axis: a gather of
  another one would read past the end of the shorter ones."""
  leaves = jax.tree_util.tree_flatten_with_path(data)[0]
  if len({np.shape(v)[0] for _, v in leaves}) > 1:
    _check_lengths({_features.ident(tuple(k.key for k in p)): np.shape(v)[0] for p, v in leaves})
  return data


def _check_lengths(lengths: Mapping[Any, int]) -> None:
  if len(set(lengths.values())) > 1:
    raise ValueError(
        f"Expected every feature to have the same number of records (leading"
        f" axis), got {dict(lengths)}; slice them to a common length."
    )


def _describe(value: Any) -> str:
  shape = getattr(value, "shape", None)
  text = repr(value) if shape is None else f"shape {tuple(shape)}"
  return f"{type(value).__name__} {text[:80]}"


def to_jax_dtype(key: str, value: np.ndarray, target: np.dtype, label: str) -> np.ndarray:
  """``value`` in ``target`` dtype; integers that do not fit are an error, never wrapped."""
  if value.dtype == target:
    return value
  if np.issubdtype(value.dtype, np.integer) and value.size:
    bounds = np.iinfo(target)
    if value.min() < bounds.min or value.max() > bounds.max:
      raise ValueError(
          f"Expected feature {key} of {label} to fit {target} (JAX's integer type"
          f" with x64 disabled), got values in [{value.min()}, {value.max()}]; enable"
          " jax_enable_x64 before loading, or exclude the feature.")
  return value.astype(target)


def check_device(device: Any) -> None:
  """Raises unless ``device`` is None, a ``jax.Device`` or a ``jax.sharding.Sharding``."""
  if device is not None and not isinstance(device, (jax.Device, jax.sharding.Sharding)):
    raise TypeError(
        f"Expected device to be None, a jax.Device or a jax.sharding.Sharding, got"
        f" {_describe(device)}; pass for example jax.devices('cpu')[0].")


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
    ValueError: if ``arrays`` is empty, a feature is a scalar or ragged
      (nested lists of several shapes), the leading axes differ, there are no
      records, or integers do not fit JAX's dtype (int64 values beyond int32
      with x64 disabled: never wrapped, as in :func:`load`).
    TypeError: if a key is not a string, a feature is not numeric, or
      ``device`` is not a device or sharding.

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
  check_device(device)
  label = f"{name}[{split}]" if name else "from_arrays"
  lengths = {}
  converted = {}
  for path, value in _flat_arrays(arrays).items():
    key = _features.name(path)
    if not isinstance(value, jax.Array):
      try:
        value = np.asarray(value)
      except (ValueError, TypeError) as e:
        raise ValueError(
            f"Expected feature {key} to be an array (or nested lists of one shape), got ragged"
            f" {type(value).__name__} ({e}); pad its records to one shape, or give each shape"
            " its own source.") from None
    dtype = value.dtype
    if not (jnp.issubdtype(dtype, jnp.number) or jnp.issubdtype(dtype, jnp.bool_)):
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
    lengths[_features.ident(path)] = shape[0]
    if isinstance(value, np.ndarray):  # JAX's dtype: int64 -> int32 with x64 off, never wrapped
      value = to_jax_dtype(key, value, np.dtype(jax.dtypes.canonicalize_dtype(dtype)), label)
    converted[path] = value
  _check_lengths(lengths)
  n = next(iter(lengths.values()))
  if not 0 < n <= _MAX_RECORDS:
    raise ValueError(
        f"Expected between 1 and 2**31 - 1 records, got {n}; give at least one"
        " record, or shard larger datasets."
    )
  data = jax.tree.map(lambda v: jax.device_put(v, device), _features.unflatten(converted))
  return Source(data=data, name=name, split=split, info=info)


def _flat_arrays(tree: Mapping[str, Any], prefix: tuple = ()) -> dict[tuple, Any]:
  """``{path: array-like}`` of a nested dict; keys must be strings, dicts non-empty."""
  out = {}
  for key, value in tree.items():
    if not isinstance(key, str):
      raise TypeError(f"Expected feature names to be str, got {key!r}; rename it.")
    if isinstance(value, Mapping):
      if not value:
        raise ValueError(f"Expected feature {_features.name(prefix + (key,))} to hold arrays, got"
                         " an empty dict; leave it out.")
      out.update(_flat_arrays(value, prefix + (key,)))
    else:
      out[prefix + (key,)] = value
  return out


def element_spec(source: Source | Mapping[str, jax.Array]) -> dict[str, jax.ShapeDtypeStruct]:
  """Returns the shape and dtype of one record, per feature.

  Args:
    source: a :class:`Source`, a dict of arrays with a leading record axis, or
      a :class:`Stream`.

  Returns:
    feature name -> ``jax.ShapeDtypeStruct`` of a single record (nested as
    the data is).

  Raises:
    TypeError: if ``source`` is none of those.

  Example:
    >>> import numpy as np, tfds_jax
    >>> tfds_jax.element_spec(tfds_jax.from_arrays({"x": np.zeros((4, 2), np.float32)}))
    {'x': ShapeDtypeStruct(shape=(2,), dtype=float32)}
  """
  if _has_methods(source):
    return source.element_spec()
  return jax.tree.map(lambda v: jax.ShapeDtypeStruct(v.shape[1:], v.dtype), _arrays(source))


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
    TypeError: for anything but an int, an integer array or a JAX key (a
      string, a float, a bool).

  Example:
    >>> import jax, tfds_jax
    >>> int(tfds_jax.as_seed(7))
    7
    >>> tfds_jax.as_seed(jax.random.key(0)).dtype
    dtype('uint32')
  """
  if isinstance(seed, (bool, np.bool_)) or not isinstance(seed, (int, np.integer, np.ndarray, jax.Array)):
    raise TypeError(
        f"Expected an int seed in [0, 2**32) or a JAX key, got {_describe(seed)}; pass for"
        " example seed=42 or seed=jax.random.key(0).")
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

  Raises:
    TypeError: for a source that is none of those, or a seed that is not an
      int, an integer array or a JAX key.

  Example:
    >>> import numpy as np, tfds_jax
    >>> src = tfds_jax.from_arrays({"x": np.arange(10)})
    >>> state = tfds_jax.init(src, seed=42, shuffle=True)
    >>> int(state.epoch), int(state.index), int(state.seed)
    (0, 0, 42)
  """
  if _has_methods(source) and hasattr(source, "init"):
    return source.init(seed, shuffle)
  n = source.num_records if _has_methods(source) else _num_records(_arrays(source))
  seed = as_seed(seed)  # checked even when unused: a bad seed is a bug either way
  zero = jnp.zeros((), jnp.int32)
  return issue(SourceState(epoch=zero, index=zero, seed=seed if shuffle else None), n)


def _check_batch_size(n: int, batch_size: Any, what: str = "batch_size") -> None:
  if batch_size is None:
    raise TypeError(f"Expected {what} (records per batch), got None; pass it, e.g."
                    f" {what}=128 (only a Pipeline knows its own).")
  if (isinstance(batch_size, (jax.core.Tracer, bool, np.bool_))
      or not isinstance(batch_size, (int, np.integer))):
    raise TypeError(
        f"Expected {what} to be a static Python int, got {type(batch_size).__name__};"
        " mark it static: jax.jit(f, static_argnames='batch_size')."
    )
  if batch_size < 1:
    raise ValueError(f"Expected {what} >= 1, got {batch_size}; pass a positive number of records"
                     " per batch.")
  if batch_size > n:
    raise ValueError(
        f"Expected 1 <= {what} <= {n} (the number of records), got {batch_size};"
        " use a smaller batch, or a larger dataset or split."
    )


# States this module handed out, by the identity of their epoch and index arrays:
# their values are known to be valid for ``n`` records without reading them back
# (which would wait for the device on every eager call).
_ISSUED: dict[tuple[int, int], tuple[weakref.ref, weakref.ref, int]] = {}


def issue(state: SourceState, n: int) -> SourceState:
  """Returns ``state``, remembered as a valid state of ``n`` records (see :func:`check_state`)."""
  epoch, index = state.epoch, state.index
  if all(isinstance(x, jax.Array) and not isinstance(x, jax.core.Tracer) for x in (epoch, index)):
    key = (id(epoch), id(index))
    forget = lambda _, key=key: _ISSUED.pop(key, None)  # noqa: E731
    _ISSUED[key] = (weakref.ref(epoch, forget), weakref.ref(index, forget), n)
  return state


def _issued(state: SourceState, n: int) -> bool:
  entry = _ISSUED.get((id(state.epoch), id(state.index)))
  return (entry is not None and entry[0]() is state.epoch and entry[1]() is state.index
          and entry[2] == n)


def check_state(state: Any, n: int, label: str = "the source") -> tuple[int, int] | None:
  """Checks a state against a source of ``n`` records, as far as its values are known.

  Types, dtypes and shapes are static and always checked (under ``jit`` too).
  Concrete values are checked too: ``0 <= epoch < 2**31``, ``0 <= index < n``
  and a seed in ``[0, 2**32)``, reading epoch and index back only for states
  this module did not hand out itself (and a seed only if it is not uint32).

  Returns:
    ``(epoch, index)`` as ints if they were read, else None (traced, or known valid).

  Raises:
    TypeError: not a :class:`SourceState`, or a field of a non-integer dtype
      or not a scalar.
    ValueError: concrete values out of range for ``n`` records.
  """
  if not isinstance(state, SourceState):
    raise TypeError(
        f"Expected a SourceState, got {_describe(state)}; make one with tfds_jax.init(source),"
        " or restore a saved one with tfds_jax.state_from_dict(source, saved).")
  for field in ("epoch", "index", "seed"):
    value = getattr(state, field)
    if value is None and field == "seed":
      continue
    known = not isinstance(value, (bool, np.bool_)) and isinstance(
        value, (int, np.generic, np.ndarray, jax.Array))
    dtype = np.asarray(value).dtype if isinstance(value, int) else getattr(value, "dtype", None)
    if not known or not np.issubdtype(dtype, np.integer) or np.shape(value) != ():
      got = (f"dtype {dtype} and shape {np.shape(value)}" if known and dtype is not None
             else _describe(value))
      raise TypeError(
          f"Expected the state's {field} to be an integer scalar, got {got}; make states with"
          " tfds_jax.init, and vmap over batched states.")
  if any(isinstance(x, jax.core.Tracer) for x in state):
    return None
  seed = state.seed
  if seed is not None and getattr(seed, "dtype", None) != np.uint32:  # uint32 seeds are all in range
    if not 0 <= int(seed) < 2**32:  # used modulo 2**32 otherwise: silently another order
      raise ValueError(
          f"Expected the state's seed in [0, 2**32), got {int(seed)}; make states with"
          " tfds_jax.init(source, seed=..., shuffle=True), which turns any seed into one.")
  if _issued(state, n):
    return None
  epoch, index = int(state.epoch), int(state.index)
  if epoch < 0 or not 0 <= index < n:
    raise ValueError(
        f"Expected a state of {label} with epoch >= 0 and 0 <= index < {n} (its number of"
        f" records), got epoch {epoch}, index {index}; it belongs to another dataset or split:"
        " make it with tfds_jax.init(source), or restore it with state_from_dict.")
  if epoch >= 2**31:  # an int32 field: a jitted call could not even take it
    raise ValueError(
        f"Expected the state's epoch below 2**31 (an int32), got {epoch}; make states with"
        " tfds_jax.init(source) and advance them with next_batch.")
  return epoch, index


def as_arrays(state: SourceState) -> SourceState:
  """A checked state with Python ints (a hand-made state) as the int32 / uint32 arrays
  :func:`init` makes: a jitted call would take a seed above ``2**31`` for an int32."""
  if not any(isinstance(x, int) for x in state):
    return state
  return SourceState(*(jnp.asarray(x, dtype) if isinstance(x, int) else x
                       for x, dtype in zip(state, (jnp.int32, jnp.int32, _U32))))


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
    index: int scalar in ``[0, n)``, the first position within that epoch
      (traced: taken modulo ``n``, as for an invalid traced state).
    size: number of positions, ``1 <= size <= n`` (static).
    seed: uint32[] seed of epoch 0, or None for sequential order.

  Returns:
    int32[size] record indices.

  Raises:
    ValueError: a concrete ``epoch < 0`` or ``index`` outside ``[0, n)``, or
      ``size`` or ``num_records`` out of range.
    TypeError: non-integer ``epoch``, ``index`` or ``seed``.

  Example:
    >>> import tfds_jax
    >>> tfds_jax.record_indices(5, 0, 3, 4, None).tolist()
    [3, 4, 0, 1]
  """
  if (isinstance(num_records, (bool, np.bool_)) or not isinstance(num_records, (int, np.integer))
      or not 1 <= num_records <= _MAX_RECORDS):
    raise ValueError(f"Expected num_records to be an int in [1, 2**31 - 1], got {num_records!r};"
                     " pass the dataset's size (source.num_records).")
  _check_batch_size(num_records, size, "size")
  check_state(SourceState(epoch, index, seed), num_records, f"{num_records} records")
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
  batch one device or process reads. Total: ``index`` is taken modulo ``n``,
  so every record returned is in ``[0, n)``.

  Returns:
    int32 record indices, shaped like ``offsets``.
  """
  n = _U32(num_records)
  j = _shuffle.wrap(index, num_records) + jnp.asarray(offsets).astype(_U32)
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
      A traced negative ``start`` is split by floor division like any other
      (``-1`` is the last position of epoch ``-1``, whose seed is
      ``(seed - 1) mod 2**32``); a concrete one is an error.
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
    ValueError: if ``size`` is not in ``[1, n]`` or a concrete ``start`` is
      negative, or ``sharding`` does not divide the batch.
    TypeError: if ``start`` or ``seed`` is not an integer (checked under
      ``jit`` too), or ``data`` is not a source.

  Example:
    >>> import numpy as np, tfds_jax
    >>> src = tfds_jax.from_arrays({"x": np.arange(5)})
    >>> tfds_jax.batch_at(src, 3, 4)["x"].tolist()
    [3, 4, 0, 1]
  """
  if _has_methods(data):
    return data.batch_at(start, size, seed, sharding=sharding)
  arrays = _arrays(data)
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
  shuffle seeds are); a traced one must fit the integer dtype, and a negative
  one is split by floor division (index in ``[0, n)``, epoch negative). A
  concrete array is read back and treated as the int it holds.
  """
  start = check_start(start)
  if isinstance(start, jax.core.Tracer):
    return start // n, start % n
  epoch, index = divmod(start, n)
  return jnp.asarray(epoch % 2**32, dtype=_U32), jnp.asarray(index, jnp.int32)


def check_start(start: Any) -> int | jax.Array:
  """A start position as a Python int ``>= 0``, or the integer tracer it is.

  Raises:
    TypeError: not an integer scalar (a float, a bool, an array of another shape).
    ValueError: a concrete negative position.
  """
  if isinstance(start, (bool, np.bool_)):
    raise TypeError(f"Expected an integer start position, got {start!r}; pass an int.")
  if not isinstance(start, (int, np.integer)):
    start = start if isinstance(start, jax.Array) else np.asarray(start)
    if not jnp.issubdtype(start.dtype, jnp.integer) or start.shape != ():
      raise TypeError(
          f"Expected start to be an integer scalar, got dtype {start.dtype} and shape"
          f" {start.shape}; positions are whole numbers: pass an int (vmap over several).")
    if isinstance(start, jax.core.Tracer):
      return start
  if start < 0:
    raise ValueError(f"Expected start >= 0, got {int(start)}; positions count from 0.")
  return int(start)


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

  An invalid state is an error where its values are concrete (an eager call);
  inside ``jit`` the state ``(epoch, index)`` is read as ``(epoch, index mod
  n)`` and the result is that position's batch and state (see the module
  docstring): it never reads outside the data and never hangs.

  Raises:
    ValueError: if ``batch_size`` is not in ``[1, num_records]``, or a concrete
      state has ``epoch < 0`` or ``index`` outside ``[0, num_records)``.
    TypeError: if ``state`` is not a :class:`SourceState` of integer scalars,
      or ``source`` is not a source.

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
  arrays = _arrays(source)
  n = _num_records(arrays)
  _check_batch_size(n, batch_size)
  check_state(state, n, _label(source))
  state = as_arrays(state)
  if sharding is None:
    batch, epoch, index = _next(arrays, state.epoch, state.index, batch_size, state.seed)
  else:
    batch = sharded((arrays, state.epoch, state.index, state.seed), batch_size, sharding)
    epoch, index = advance(n, state.epoch, state.index, batch_size)
  return batch, issue(SourceState(epoch=epoch, index=index, seed=state.seed), n)


def _label(source: Any) -> str:
  name = getattr(source, "name", None)
  return f"{name}[{getattr(source, 'split', None)}]" if name else "the source"


@functools.partial(jax.jit, static_argnames="batch_size")
def _next(data, epoch, index, batch_size, seed):
  batch = _gather(data, epoch, index, batch_size, seed)
  return (batch, *advance(_num_records(data), epoch, index, batch_size))


@functools.partial(jax.jit, static_argnums=(0, 3))
def advance(n: int, epoch, index, size: int) -> tuple[jax.Array, jax.Array]:
  """(epoch, index) after ``size`` more positions: int32 scalars (jitted: one
  dispatch when called eagerly, inlined inside ``jit``). Total: ``index`` is
  taken modulo ``n`` first, so the result is always a valid state."""
  advanced = _shuffle.wrap(index, n) + _U32(size)
  wrapped = advanced >= _U32(n)
  epoch = (epoch + wrapped).astype(jnp.int32)
  return epoch, jnp.where(wrapped, advanced - _U32(n), advanced).astype(jnp.int32)
