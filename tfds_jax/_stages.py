"""Stages: pure batch transforms, composed with :func:`chain`.

A :class:`Stage` maps ``(keys, batch) -> batch``. ``keys`` holds one
``jax.random`` key per record, derived from the run's seed and the record's
global position (epoch, position in epoch) alone, so augmentation is the same
whatever the batch size, the number of devices or processes, and however the
run was resumed. Stages must treat records independently (no statistics over
the batch), which is what makes that true.

A stage is a pytree: its arrays (normalization statistics, say) are leaves
passed into ``jit`` as arguments, and its function and options are static, so
equal stages never retrace.

Built-in stages name the features they change with ``features=``: a name
(``"image"``, or a top-level name with a slash such as ``"image/filename"``),
or a list of names and paths into nested features (``[("objects", "bbox")]``).

Example:
  >>> import numpy as np, jax, tfds_jax
  >>> augment = tfds_jax.chain(
  ...     tfds_jax.to_float(),
  ...     tfds_jax.random_flip(),
  ...     tfds_jax.one_hot(10))
  >>> batch = {"image": np.zeros((2, 4, 4, 1), np.uint8), "label": np.array([3, 7])}
  >>> keys = tfds_jax.record_keys(0, 0, 0, 2, 100)
  >>> augment(keys, batch)["label"].shape
  (2, 10)
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from tfds_jax import _features as _feat
from tfds_jax import _shuffle
from tfds_jax._types import Batch


@dataclasses.dataclass(frozen=True, eq=False)
class Stage:
  """A pure batch transform: ``stage(keys, batch) -> batch``.

  Make one with :func:`stage` or a built-in (:func:`to_float`,
  :func:`normalize`, :func:`random_flip`, :func:`random_crop`,
  :func:`one_hot`), compose with :func:`chain`.

  Attributes:
    fn: ``fn(keys, batch, params, **options) -> batch`` (static).
    params: a pytree of arrays the stage reads (leaves, passed into ``jit``).
    options: static keyword options, as a tuple of (name, value) pairs.
  """

  fn: Callable[..., Batch]
  params: Any = ()
  options: tuple = ()

  def __call__(self, keys: jax.Array, batch: Mapping[str, jax.Array]) -> Batch:
    """Applies the stage; ``keys`` is a key array of shape ``[batch_size]``.

    Raises:
      TypeError: the stage returned something other than a dict of arrays.
      ValueError: it returned an empty dict, or changed the batch size.
    """
    sizes = {np.shape(v)[0] for v in jax.tree.leaves(batch) if np.ndim(v)}
    out = self.fn(keys, dict(batch), self.params, **dict(self.options))
    name = getattr(dict(self.options).get("fn", self.fn), "__name__", repr(self.fn)).lstrip("_")
    if not isinstance(out, Mapping):
      got = f"an array of shape {out.shape}" if hasattr(out, "shape") else type(out).__name__
      raise TypeError(f"Expected stage {name} to return a dict of arrays, got {got}; return the"
                      " whole batch, e.g. {**batch, 'image': new_image}.")
    if not out:
      raise ValueError(f"Expected stage {name} to return a non-empty dict of arrays, got {{}};"
                       " return the whole batch, e.g. {**batch, 'image': new_image}.")
    if len(sizes) == 1:
      size = sizes.pop()
      changed = {_feat.ident(k): np.shape(v)[:1] for k, v in _feat.flatten(out).items()
                 if np.shape(v)[:1] != (size,)}
      if changed:
        raise ValueError(
            f"Expected stage {name} to keep the batch size {size} in every feature, got leading"
            f" shapes {changed}; a stage maps each record to one record (filter or repeat records"
            " before making the source).")
    return dict(out)


jax.tree_util.register_dataclass(Stage, data_fields=["params"], meta_fields=["fn", "options"])


def stage(fn: Callable, *, params: Any = None, random: bool = False, **options) -> Stage:
  """Wraps a user function as a :class:`Stage`.

  Args:
    fn: a pure function of a batch (a dict of ``[batch_size, ...]`` arrays):
      ``fn(batch, **options)``; with ``params``, ``fn(batch, params,
      **options)``; with ``random=True`` it takes the per-record keys
      (key array ``[batch_size]``) first: ``fn(keys, batch, ...)``. It must
      treat records independently.
    params: optional pytree of arrays ``fn`` reads; passed into ``jit`` as
      arguments, never baked in as constants.
    random: whether ``fn`` takes the per-record keys.
    **options: static, hashable options passed to ``fn`` as keywords.

  Returns:
    A :class:`Stage`.

  Example:
    >>> import numpy as np, tfds_jax
    >>> double = tfds_jax.stage(lambda b: {**b, "x": 2 * b["x"]})
    >>> double(None, {"x": np.arange(3)})["x"].tolist()
    [0, 2, 4]
  """
  if not callable(fn):
    raise TypeError(f"Expected a function of a batch, got {fn!r}; pass a callable.")
  return Stage(_user, params, _options(fn=fn, random=random, has_params=params is not None,
                                       **options))


def _user(keys, batch, params, *, fn, random, has_params, **options):
  args = (keys, batch) if random else (batch,)
  return fn(*args, params, **options) if has_params else fn(*args, **options)


def chain(*stages: Stage | Callable[[Batch], Batch]) -> Stage:
  """Composes stages left to right, like ``optax.chain``.

  Each stage gets its own keys, ``fold_in(key, i)`` for the ``i``-th stage, so
  adding a stage never changes the randomness of the others before it.

  Args:
    *stages: :class:`Stage` objects, or plain functions ``fn(batch) -> batch``
      (wrapped with :func:`stage`).

  Returns:
    A :class:`Stage` applying them in order.

  Example:
    >>> import numpy as np, tfds_jax
    >>> prep = tfds_jax.chain(tfds_jax.to_float(scale=1.0), tfds_jax.one_hot(3))
    >>> out = prep(None, {"image": np.ones((1, 2, 2, 1), np.uint8), "label": np.array([2])})
    >>> out["image"].dtype, out["label"].tolist()
    (dtype('float32'), [[0.0, 0.0, 1.0]])
  """
  wrapped = tuple(s if isinstance(s, Stage) else stage(s) for s in stages)
  return Stage(_chain, wrapped)


def _chain(keys, batch, stages):
  for i, s in enumerate(stages):
    batch = s(None if keys is None else _fold(keys, i), batch)
  return batch


def _fold(keys: jax.Array, i: int) -> jax.Array:
  return jax.vmap(jax.random.fold_in, (0, None))(keys, i)


def record_keys(
    seed: jax.typing.ArrayLike,
    epoch: jax.typing.ArrayLike,
    index: jax.typing.ArrayLike,
    size: int | jax.Array,
    num_records: int,
) -> jax.Array:
  """One key per record of the batch at (epoch, index), from its global position.

  The key of the record at position ``i`` of epoch ``e`` is
  ``fold_in(fold_in(key(seed), e), i)``: it depends on nothing else, so the
  same record in the same epoch gets the same augmentation whatever the batch
  size, device count or resume point.

  Args:
    seed: uint32 (or int) seed of the run.
    epoch: int scalar, the epoch of the first position.
    index: int scalar in ``[0, n)``, the first position within that epoch
      (others are taken modulo ``n``, as the record indices are).
    size: batch size (static int), or an int32 array of row offsets from
      ``index`` (each below ``num_records``) for a slice of a batch.
    num_records: dataset size ``n`` (static).

  Returns:
    A typed key array, one key per row.

  Raises:
    ValueError: ``num_records`` outside ``[1, 2**31 - 1]``, or an int ``size``
      outside ``[1, num_records]``.
    TypeError: ``num_records`` or ``size`` is a float or bool.

  Example:
    >>> import tfds_jax
    >>> tfds_jax.record_keys(0, 0, 3, 4, 5).shape
    (4,)
  """
  num_records = _int(num_records, "record_keys's num_records", "pass the dataset's size")
  if not 1 <= num_records <= 2**31 - 1:
    raise ValueError(f"Expected num_records in [1, 2**31 - 1], got {num_records}; pass the dataset's"
                     " size (source.num_records).")
  if not isinstance(size, (jax.Array, np.ndarray)):
    size = _int(size, "record_keys's size", "pass the batch size")
    if not 1 <= size <= num_records:  # positions past the next epoch would get other epochs' keys
      raise ValueError(f"Expected 1 <= size <= {num_records} (the number of records), got {size};"
                       " a batch spans at most two epochs: use a smaller batch.")
  offsets = jnp.arange(size, dtype=jnp.uint32) if isinstance(size, int) else size
  n = jnp.uint32(num_records)
  index = int(index) % num_records if isinstance(index, (int, np.integer)) else index
  pos = _shuffle.wrap(index, num_records) + _u32(offsets)  # total, as the record indices are
  wrapped = pos >= n
  epochs = _u32(epoch) + wrapped.astype(jnp.uint32)
  pos = jnp.where(wrapped, pos - n, pos)
  base = jax.random.key(_u32(seed))
  fold = jax.vmap(lambda e, i: jax.random.fold_in(jax.random.fold_in(base, e), i))
  return fold(epochs, pos)


def _int(value: Any, what: str, hint: str) -> int:
  """``value`` as an int; a float (never truncated), a bool or anything else is an error."""
  if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
    raise TypeError(f"Expected {what} to be an int, got {type(value).__name__} {value!r}; {hint}.")
  return int(value)


def _u32(x: jax.typing.ArrayLike) -> jax.Array:
  """uint32 of an int (any size, modulo 2**32) or an integer array."""
  if isinstance(x, (int, np.integer)):
    return jnp.asarray(int(x) % 2**32, jnp.uint32)
  return jnp.asarray(x).astype(jnp.uint32)


def _options(**options) -> tuple:
  for name, value in options.items():
    try:
      hash(value)
    except TypeError:
      raise TypeError(f"Expected option {name}={value!r} to be hashable (static), got"
                      f" {type(value).__name__}; pass a tuple, or pass arrays as params=.") from None
  return tuple(sorted(options.items()))


def _features(features: str | Sequence[str | tuple]) -> tuple:
  """Feature names (str) or paths into nested features (tuples of str), as a tuple."""
  if isinstance(features, str):
    return (features,)
  out = tuple(features)
  for f in out:
    _feat.as_path(f)  # TypeError for anything else
  return out


def _present(batch: Batch, features: tuple, what: str) -> None:
  missing = []
  for f in features:
    try:
      _feat.get(batch, f)
    except KeyError:
      missing.append(f)
  if missing:
    raise KeyError(f"Expected features {list(features)} for {what}, got a batch with"
                   f" {sorted(batch)} (missing {missing}); pass features=[...] naming them"
                   " (nested ones by path, e.g. [('objects', 'bbox')]).")


def to_float(features: str | Sequence[str | tuple] = "image", *, scale: float = 1 / 255,
             dtype: Any = jnp.float32) -> Stage:
  """Converts features to floats and multiplies them by ``scale``.

  Args:
    features: feature name(s) to convert.
    scale: multiplier applied after the conversion (``1/255`` maps uint8
      pixels to ``[0, 1]``); pass 1.0 before :func:`normalize` with computed
      statistics, which are in raw units.
    dtype: floating dtype of the result.

  Returns:
    A deterministic :class:`Stage`.

  Raises:
    TypeError: ``dtype`` is not a floating dtype.

  Example:
    >>> import numpy as np, tfds_jax
    >>> tfds_jax.to_float()(None, {"image": np.full((1, 1), 255, np.uint8)})["image"].tolist()
    [[1.0]]
  """
  dtype = jnp.dtype(dtype)
  if not jnp.issubdtype(dtype, jnp.floating):
    raise TypeError(f"Expected a floating dtype for to_float, got {dtype}; pass e.g. jnp.float32 or"
                    " jnp.bfloat16 (in an integer dtype, pixels scaled by 1/255 round to 0).")
  return Stage(_to_float, (), _options(features=_features(features), scale=float(scale), dtype=dtype))


def _to_float(keys, batch, params, *, features, scale, dtype):
  _present(batch, features, "to_float")
  for f in features:
    batch = _feat.put(batch, f, _feat.get(batch, f).astype(dtype) * jnp.asarray(scale, dtype))
  return batch


def normalize(stats: Any = None, *, mean: Any = None, std: Any = None,
              features: str | Sequence[str | tuple] = "image") -> Stage:
  """Subtracts a mean and divides by a standard deviation, per channel.

  The result is float32 whatever the input dtype, so no :func:`to_float` is
  needed first. Statistics from :func:`compute_statistics` are in the
  source's raw units (0-255 pixels): apply ``normalize`` to raw values, or
  after ``to_float(scale=1.0)``, never after a rescaling ``to_float()``.

  Args:
    stats: a :class:`Statistics` (from :func:`compute_statistics`, or restored
      from a checkpoint): its ``mean`` and ``std`` of each named feature.
    mean: instead of ``stats``: feature -> array (or one array for every
      feature) broadcasting against a record, e.g. ``[C]`` per channel.
    std: like ``mean``. Zero entries (constant channels) divide by 1.
    features: feature name(s) to normalize.

  Returns:
    A deterministic :class:`Stage` whose statistics are pytree leaves.

  Raises:
    KeyError: statistics given per feature lack one of ``features``.
    ValueError: neither ``stats`` nor ``mean`` and ``std``; when traced,
      statistics that do not broadcast to the feature's record shape (3
      channels against 1, say).

  Example:
    >>> import numpy as np, tfds_jax
    >>> norm = tfds_jax.normalize(mean=np.float32(2.0), std=np.float32(4.0), features="x")
    >>> norm(None, {"x": np.array([6.0])})["x"].tolist()
    [1.0]
  """
  features = _features(features)
  if (stats is None) == (mean is None or std is None):
    raise ValueError("Expected either stats= or both mean= and std=, got"
                     f" stats={'given' if stats is not None else None}, mean={mean is not None},"
                     f" std={std is not None}; pass one of them.")
  if stats is not None:
    mean, std = stats.mean, stats.std
  params = []
  for f in features:
    for what, given in (("mean", mean), ("std", std)):
      if isinstance(given, Mapping):
        try:
          _feat.get(given, f)
        except KeyError:
          raise KeyError(
              f"Expected statistics ({what}) of feature {_feat.name(_feat.as_path(f))} for normalize,"
              f" got statistics of {sorted(given)}; pass features= naming one of those, or compute"
              f" them with compute_statistics(source, features=[{f!r}]).") from None
    m = _feat.get(mean, f) if isinstance(mean, Mapping) else mean
    s = _feat.get(std, f) if isinstance(std, Mapping) else std
    params.append((jnp.asarray(m, jnp.float32), jnp.asarray(s, jnp.float32)))
  return Stage(_normalize, tuple(params), _options(features=features))


def _normalize(keys, batch, params, *, features):
  _present(batch, features, "normalize")
  for f, (mean, std) in zip(features, params):
    x = _feat.get(batch, f)
    record = x.shape[1:]
    for what, stat in (("mean", mean), ("std", std)):
      try:
        fits = jnp.broadcast_shapes(stat.shape, record) == record
      except ValueError:
        fits = False
      if not fits:
        raise ValueError(
            f"Expected normalize statistics for {_feat.name(_feat.as_path(f))} that broadcast to its"
            f" record shape {record} (per channel: [{record[-1] if record else ''}]), got a {what}"
            f" of shape {stat.shape}; compute them from this source (compute_statistics), or pass"
            " per_channel=False statistics.")
    batch = _feat.put(batch, f, (x - mean) / jnp.where(std > 0, std, 1.0))
  return batch


def random_flip(features: str | Sequence[str | tuple] = "image", *, axis: int = -2,
                probability: float = 0.5) -> Stage:
  """Flips each record along ``axis`` with probability ``probability``.

  All named features of one record flip together (an image and its mask).

  Args:
    features: feature name(s) to flip.
    axis: record axis to reverse, in ``[-rank, rank)`` of the record (checked
      when traced); ``-2`` is the width of ``[H, W, C]`` images (a horizontal
      flip).
    probability: chance that a record is flipped, in ``[0, 1]``.

  Returns:
    A random :class:`Stage`.

  Raises:
    ValueError: ``probability`` outside ``[0, 1]``; when traced, an ``axis``
      the record does not have.
    TypeError: ``axis`` is not an int.

  Example:
    >>> import numpy as np, tfds_jax
    >>> flip = tfds_jax.random_flip("x", axis=-1, probability=1.0)
    >>> flip(tfds_jax.record_keys(0, 0, 0, 1, 1), {"x": np.array([[1, 2, 3]])})["x"].tolist()
    [[3, 2, 1]]
  """
  if not 0.0 <= float(probability) <= 1.0:
    raise ValueError(f"Expected probability in [0, 1] for random_flip, got {probability}; pass"
                     " the chance that a record is flipped.")
  axis = _int(axis, "random_flip's axis", "pass a record axis, e.g. -2 for the width of [H, W, C]"
              " images")
  return Stage(_flip, (), _options(features=_features(features), axis=axis,
                                   probability=float(probability)))


def _flip(keys, batch, params, *, features, axis, probability):
  _present(batch, features, "random_flip")
  flip = jax.vmap(jax.random.bernoulli, (0, None))(_need(keys, "random_flip"), probability)
  for f in features:
    x = _feat.get(batch, f)
    rank = x.ndim - 1  # of one record
    if not -rank <= axis < rank:
      raise ValueError(
          f"Expected axis in [{-rank}, {rank}) for random_flip of {_feat.name(_feat.as_path(f))}"
          f" (records of shape {x.shape[1:]}), got {axis}; -2 flips the width of [H, W, C] images.")
    ax = axis % rank + 1  # the record's axis, counted in the batch
    where = flip.reshape((-1,) + (1,) * (x.ndim - 1))
    batch = _feat.put(batch, f, jnp.where(where, jnp.flip(x, ax), x))
  return batch


def random_crop(features: str | Sequence[str | tuple] = "image", *, padding: int = 4,
                size: tuple[int, int] | None = None) -> Stage:
  """Pads ``[H, W, C]`` records with zeros and crops a random window.

  The usual CIFAR augmentation: pad by ``padding`` on each side, crop back to
  ``size`` (default: the original ``H, W``) at a random offset per record.
  All named features of one record use the same window.

  Args:
    features: feature name(s) of shape ``[batch, H, W, C]``.
    padding: zeros added on each side of H and W.
    size: ``(height, width)`` of the crop.

  Returns:
    A random :class:`Stage`.

  Raises:
    TypeError: ``padding`` or a size is not an int (never truncated).
    ValueError: ``padding < 0``, or ``size`` not two positive ints.

  Example:
    >>> import numpy as np, tfds_jax
    >>> crop = tfds_jax.random_crop(padding=2)
    >>> keys = tfds_jax.record_keys(0, 0, 0, 3, 3)
    >>> crop(keys, {"image": np.ones((3, 8, 8, 3), np.uint8)})["image"].shape
    (3, 8, 8, 3)
  """
  padding = _int(padding, "random_crop's padding", "pass a whole number of pixels")
  if padding < 0:
    raise ValueError(f"Expected padding >= 0, got {padding}; pass 0 or more pixels.")
  if size is not None:
    size = tuple(_int(s, "each of random_crop's size", "pass (height, width) in pixels") for s in size)
    if len(size) != 2 or min(size) < 1:
      raise ValueError(f"Expected size=(height, width) of positive ints, got {size}; pass e.g."
                       " size=(24, 24), or None for the image's own size.")
  return Stage(_crop, (), _options(features=_features(features), padding=padding, size=size))


def _crop(keys, batch, params, *, features, padding, size):
  _present(batch, features, "random_crop")
  keys = _need(keys, "random_crop")
  shape = _feat.get(batch, features[0]).shape
  if len(shape) != 4:
    raise ValueError(f"Expected {features[0]!r} of shape [batch, H, W, C] for random_crop, got"
                     f" {shape}; crop image features only.")
  h, w = size or shape[1:3]
  if h > shape[1] + 2 * padding or w > shape[2] + 2 * padding:
    raise ValueError(f"Expected a crop of at most {shape[1] + 2 * padding}x"
                     f"{shape[2] + 2 * padding} for {features[0]!r}, got {h}x{w}; use a smaller"
                     " size= or more padding=.")
  limits = jnp.array([shape[1] + 2 * padding - h + 1, shape[2] + 2 * padding - w + 1])
  corners = jax.vmap(lambda k: jax.random.randint(k, (2,), 0, limits))(keys)
  for f in features:
    x = jnp.pad(_feat.get(batch, f), ((0, 0), (padding, padding), (padding, padding), (0, 0)))
    window = (h, w, x.shape[3])
    batch = _feat.put(batch, f, jax.vmap(
        lambda img, c: jax.lax.dynamic_slice(img, (c[0], c[1], 0), window))(x, corners))
  return batch


def one_hot(num_classes: int, features: str | Sequence[str | tuple] = "label", *,
            dtype: Any = jnp.float32) -> Stage:
  """Replaces integer labels by one-hot vectors of length ``num_classes``.

  Labels outside ``[0, num_classes)`` would give all-zero rows: a
  :func:`pipeline` refuses a ``num_classes`` below the labels' range where it
  is known (the ``ClassLabel`` of the dataset info, or the values of an
  in-memory source), unless a stage of your own comes first.

  Args:
    num_classes: number of classes.
    features: integer feature name(s).
    dtype: dtype of the vectors.

  Returns:
    A deterministic :class:`Stage`.

  Example:
    >>> import numpy as np, tfds_jax
    >>> tfds_jax.one_hot(3)(None, {"label": np.array([0, 2])})["label"].tolist()
    [[1.0, 0.0, 0.0], [0.0, 0.0, 1.0]]
  """
  if isinstance(num_classes, bool) or not isinstance(num_classes, (int, np.integer)) or num_classes < 1:
    raise ValueError(f"Expected num_classes to be a positive int, got {num_classes!r}; pass"
                     " e.g. info(source).features['label'].num_classes.")
  return Stage(_one_hot, (), _options(num_classes=int(num_classes), features=_features(features),
                                      dtype=jnp.dtype(dtype)))


def _one_hot(keys, batch, params, *, num_classes, features, dtype):
  _present(batch, features, "one_hot")
  for f in features:
    labels = _feat.get(batch, f)
    if not jnp.issubdtype(labels.dtype, jnp.integer):
      raise TypeError(f"Expected integer labels in {f!r} for one_hot, got {labels.dtype};"
                      " apply one_hot before converting labels.")
    batch = _feat.put(batch, f, jax.nn.one_hot(labels, num_classes, dtype=dtype))
  return batch


def raw_one_hots(stages: Stage) -> list[tuple[str, int]]:
  """``(feature, num_classes)`` of each :func:`one_hot` that sees the source's raw values.

  Walks the stages in order: a built-in stage changes only the features it
  names; a stage of the user's own may change anything, so nothing after it
  counts as raw.
  """
  found, touched = [], set()

  def walk(s: Stage) -> bool:  # False: a user stage; stop
    if s.fn is _chain:
      return all(walk(t) for t in s.params)
    if s.fn is _user:
      return False
    options = dict(s.options)
    features = options.get("features", ())
    if s.fn is _one_hot:
      found.extend((f, options["num_classes"]) for f in features if f not in touched)
    touched.update(features)
    return True

  walk(stages)
  return found


def _need(keys, what: str) -> jax.Array:
  if keys is None:
    raise ValueError(f"Expected per-record keys for the random stage {what}, got None; run it"
                     " in a pipeline, or pass record_keys(seed, epoch, index, size, n).")
  return keys
