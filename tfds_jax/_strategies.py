"""Hypothesis strategies for tfds_jax's inputs: sources, states, batch sizes, seeds, meshes.

hypothesis is an optional dependency (``pip install tfds_jax[testing]``): it is
imported when a strategy is made, never when this module is.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from tfds_jax import _features
from tfds_jax._pipeline import Pipeline
from tfds_jax._source import SourceState, element_spec, from_arrays, init

DTYPES = ("uint8", "int8", "int32", "uint32", "float16", "float32", "bool")
"""The dtypes :func:`sources` draws from by default."""

_NAMES = ("image", "label", "mask", "meta/score", "x")


def _st():
  try:
    from hypothesis import strategies  # pylint: disable=import-outside-toplevel
  except ImportError as e:
    raise ImportError("Expected hypothesis for tfds_jax.testing's strategies, got none installed;"
                      " install it with `pip install tfds_jax[testing]` (the assertions and the"
                      " benchmark work without it).") from e
  return strategies


def _num_records(source: Any) -> int:
  if isinstance(source, (int, np.integer)) and not isinstance(source, bool):
    return int(source)
  if hasattr(source, "num_records"):
    return source.num_records
  if isinstance(source, Mapping) and source:
    return jax.tree.leaves(source)[0].shape[0]
  raise TypeError(f"Expected a Source, Pipeline, Stream or a number of records, got"
                  f" {type(source).__name__}.")


def _values(rng: np.random.Generator, shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
  if dtype == np.bool_:
    return rng.random(shape) < 0.5
  if jnp.issubdtype(dtype, jnp.integer):
    info = np.iinfo(dtype)
    return rng.integers(info.min, info.max, shape, dtype=dtype, endpoint=True)
  return (rng.standard_normal(shape) * 10).astype(dtype)


def sources(
    *,
    element_spec: Mapping[str, jax.ShapeDtypeStruct] | Any = None,
    min_records: int = 1,
    max_records: int = 64,
    max_features: int = 3,
    max_rank: int = 3,
    max_side: int = 4,
    dtypes: Sequence[Any] = DTYPES,
):
  """Strategy for small in-memory :class:`Source` objects with random values.

  Args:
    element_spec: one record's spec to follow (feature name ->
      ``jax.ShapeDtypeStruct``, or anything ``tfds_jax.element_spec``
      accepts: your own source, pipeline or stream); default: arbitrary
      features, shapes and dtypes.
    min_records: fewest records, at least 1.
    max_records: most records.
    max_features: most features (arbitrary specs only).
    max_rank: most axes per record (arbitrary specs only).
    max_side: longest axis (arbitrary specs only).
    dtypes: dtypes to draw from (arbitrary specs only).

  Returns:
    A hypothesis strategy of :class:`Source`.

  Example:
    >>> from hypothesis import given, settings
    >>> from tfds_jax import testing
    >>> @settings(max_examples=5)
    ... @given(testing.sources(max_records=8))
    ... def test(source):
    ...   assert 1 <= source.num_records <= 8
    >>> test()
  """
  st = _st()
  if not 1 <= min_records <= max_records:
    raise ValueError(f"Expected 1 <= min_records <= max_records, got {min_records} and {max_records}.")
  fixed = None
  if element_spec is not None:
    spec = element_spec if isinstance(element_spec, Mapping) else _spec_of(element_spec)
    fixed = {k: (tuple(v.shape), np.dtype(v.dtype)) for k, v in _features.flatten(spec).items()}
  names = st.lists(st.sampled_from(_NAMES), min_size=1, max_size=max(1, max_features), unique=True)
  shapes = st.lists(st.integers(1, max_side), max_size=max_rank).map(tuple)
  kinds = st.sampled_from([np.dtype(d) for d in dtypes])

  @st.composite
  def draw_source(draw):
    n = draw(st.integers(min_records, max_records))
    spec = fixed or {(name,): (draw(shapes), draw(kinds)) for name in draw(names)}
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    return from_arrays(_features.unflatten(
        {k: _values(rng, (n, *shape), dtype) for k, (shape, dtype) in spec.items()}))

  return draw_source()


def _spec_of(source: Any) -> Mapping[str, jax.ShapeDtypeStruct]:
  if isinstance(source, Pipeline):
    return element_spec(source.source)  # the raw records the pipeline reads
  return element_spec(source)


def seeds():
  """Strategy for shuffle seeds: ints in ``[0, 2**32)``.

  Returns:
    A hypothesis strategy of int.

  Example:
    >>> from hypothesis import given, settings
    >>> from tfds_jax import testing
    >>> @settings(max_examples=3)
    ... @given(testing.seeds())
    ... def test(seed):
    ...   assert 0 <= seed < 2**32
    >>> test()
  """
  return _st().integers(0, 2**32 - 1)


def keys():
  """Strategy for typed ``jax.random`` keys (``jax.random.key(seed)``).

  Returns:
    A hypothesis strategy of key arrays of shape ``()``.

  Example:
    >>> import jax
    >>> from hypothesis import given, settings
    >>> from tfds_jax import testing
    >>> @settings(max_examples=3)
    ... @given(testing.keys())
    ... def test(key):
    ...   assert jax.random.uniform(key).shape == ()
    >>> test()
  """
  return seeds().map(lambda s: jax.random.key(np.uint32(s)))


def states(source: Any, *, max_epoch: int = 3, shuffle: bool | None = None):
  """Strategy for states at arbitrary positions of ``source``: epoch, index and seed.

  Args:
    source: a :class:`Source`, :class:`Pipeline` or :class:`Stream` (only its
      size is read).
    max_epoch: the latest epoch drawn.
    shuffle: whether the states shuffle; None draws both (a pipeline's states
      always follow the pipeline).

  Returns:
    A hypothesis strategy of :class:`SourceState` made by ``init`` and moved
    to epoch ``e`` in ``[0, max_epoch]`` and index ``i`` in ``[0, n)``.

  Example:
    >>> import numpy as np, tfds_jax
    >>> from hypothesis import given, settings
    >>> from tfds_jax import testing
    >>> src = tfds_jax.from_arrays({"x": np.arange(10)})
    >>> @settings(max_examples=3)
    ... @given(testing.states(src, shuffle=True))
    ... def test(state):
    ...   assert 0 <= int(state.index) < 10 and state.seed is not None
    >>> test()
  """
  st = _st()
  n = _num_records(source)
  pipeline = isinstance(source, Pipeline)
  shuffles = st.just(shuffle) if shuffle is not None or pipeline else st.booleans()

  @st.composite
  def draw_state(draw):
    seed, shuffled = draw(seeds()), draw(shuffles)
    epoch, index = draw(st.integers(0, max_epoch)), draw(st.integers(0, n - 1))
    if isinstance(source, (int, np.integer)):  # a number of records: no source to init
      return SourceState(jnp.asarray(epoch, jnp.int32), jnp.asarray(index, jnp.int32),
                         jnp.asarray(seed, jnp.uint32) if shuffled else None)
    state = init(source, seed=seed, shuffle=shuffled)
    return state._replace(epoch=jnp.asarray(epoch, jnp.int32), index=jnp.asarray(index, jnp.int32))

  return draw_state()


def batch_sizes(source: Any, *, divides: bool | None = None, multiple_of: int = 1,
                max_size: int | None = None):
  """Strategy for batch sizes of ``source``: in ``[1, n]``, dividing ``n`` or not.

  Args:
    source: a :class:`Source`, :class:`Pipeline`, :class:`Stream` or a number
      of records ``n``.
    divides: True for sizes that divide ``n`` (no batch crosses an epoch),
      False for sizes that do not, None for any.
    multiple_of: draw multiples of this only (the devices of a mesh, say).
    max_size: the largest size drawn (default ``n``).

  Returns:
    A hypothesis strategy of int.

  Raises:
    ValueError: if no size fits.

  Example:
    >>> from hypothesis import given, settings
    >>> from tfds_jax import testing
    >>> @settings(max_examples=3)
    ... @given(testing.batch_sizes(12, divides=False))
    ... def test(batch_size):
    ...   assert 12 % batch_size != 0
    >>> test()
  """
  st = _st()
  n = _num_records(source)
  top = n if max_size is None else min(n, max_size)
  sizes = [b for b in range(multiple_of, top + 1, multiple_of)
           if divides is None or (n % b == 0) == divides]
  if not sizes:
    raise ValueError(f"Expected a batch size in [1, {top}], a multiple of {multiple_of}"
                     f"{'' if divides is None else (' dividing ' if divides else ' not dividing ')}"
                     f"{'' if divides is None else n}, got none; use a larger dataset.")
  return st.sampled_from(sizes)


def meshes(*, axis_names: Sequence[str] = ("data",), max_devices: int | None = None,
           divides: int | None = None, devices: Sequence[jax.Device] | None = None):
  """Strategy for meshes over some of the available devices, in any order.

  Args:
    axis_names: the mesh's axis names; the device count is split over them.
    max_devices: most devices in a mesh (default: all).
    divides: draw only device counts that divide this (a batch size, so
      that the batch splits evenly).
    devices: the devices to draw from (default ``jax.devices()``).

  Returns:
    A hypothesis strategy of ``jax.sharding.Mesh``.

  Example:
    >>> import jax
    >>> from hypothesis import given, settings
    >>> from tfds_jax import testing
    >>> @settings(max_examples=3)
    ... @given(testing.meshes(axis_names=("data", "model")))
    ... def test(mesh):
    ...   assert 1 <= mesh.devices.size <= len(jax.devices())
    >>> test()
  """
  st = _st()
  pool = list(jax.devices() if devices is None else devices)
  top = len(pool) if max_devices is None else min(len(pool), max_devices)
  if top < 1 or not axis_names:
    raise ValueError(f"Expected at least one device and one axis name, got {top} and {axis_names!r}.")

  counts = [c for c in range(1, top + 1) if divides is None or divides % c == 0]

  @st.composite
  def draw_mesh(draw):
    count = draw(st.sampled_from(counts))
    chosen = draw(st.permutations(pool))[:count]
    shape, rest = [], count
    for _ in axis_names[:-1]:
      side = draw(st.sampled_from([d for d in range(1, rest + 1) if rest % d == 0]))
      shape.append(side)
      rest //= side
    return jax.sharding.Mesh(np.array(chosen).reshape(*shape, rest), tuple(axis_names))

  return draw_mesh()

