"""Static shapes for TFDS features: strings, variable lengths, images of any size.

A jitted program sees one shape per feature, so every feature of a record is
made fixed once, where it is read (eager :func:`load`, both kinds of
:func:`stream`), never inside the user's step. This module holds all of it:
how a record's features are named and nested, which are strings, which vary
in shape, and how each one is made fixed.

Records keep TFDS's own structure: ``{"image": ..., "image/filename": ...,
"objects": {"bbox": ..., "label": ...}}``, exactly as ``tfds.as_numpy`` gives
them. A name is never parsed: ``"image/filename"`` is a top-level feature,
``["objects"]["bbox"]`` a field of the ``objects`` Sequence.

The options, one per feature, passed as ``shapes={name: option}``:

* :func:`pad`: pads the variable dimensions to fixed sizes (a Sequence of
  features, such as ``objects``, shares one length); the true size is kept as
  a sibling feature ``<name>_length`` (one varying dimension) or
  ``<name>_shape`` (several). A record longer than its size is an error, unless
  ``truncate=True``, and then the truncated records are counted and reported.
* :func:`resize` / :func:`crop`: an image ``[H, W, C]`` resized (or centre
  cropped and padded) to a given size, with its original shape kept as
  ``<name>_shape`` so boxes and masks can be mapped back.
* :func:`encode_text` / :func:`tokenize`: a string as integer ids (UTF-8 bytes,
  Unicode code points, or your tokenizer's ids), padded, with ``<name>_length``.

An eager load pads features with one varying dimension (Sequences, audio,
token ids, text asked for with ``encode_text()``) to the longest record of the
split by default; a stream needs every size given, since it cannot know the
longest record without reading them all. Padding values are zeros (``False``
for booleans) unless ``value=`` says otherwise.

Everything here is static configuration: it is part of the decoded-cache key,
so two different shapes never share an entry.
"""

from __future__ import annotations

import dataclasses
import logging
import warnings
from typing import Any, Callable, Iterable, Mapping

import jax
import numpy as np

log = logging.getLogger("tfds_jax")

Path = tuple  # tuple[str, ...]: keys from the record's root down to a feature
PRIVATE = "__tfds_jax__"  # per-record bookkeeping added while reading, removed before JAX sees it
_RESIZE_METHODS = ("bilinear", "nearest", "bicubic", "area", "lanczos3", "lanczos5", "gaussian",
                   "mitchellcubic")
_TEXT_UNITS = {"byte": np.uint8, "codepoint": np.int32}


@dataclasses.dataclass(frozen=True)
class FixedShape:
  """How one feature (or one Sequence of features) gets a static shape.

  Make one with :func:`pad`, :func:`resize`, :func:`crop`, :func:`encode_text`
  or :func:`tokenize`, and pass it as ``shapes={name: ...}`` to :func:`load`,
  :func:`stream` or :func:`from_tfds`.

  Attributes:
    kind: ``"pad"``, ``"resize"``, ``"crop"``, ``"text"`` or ``"tokenize"``.
    sizes: the fixed sizes: one per varying dimension (``pad``, ``None`` for the
      longest record of the split), ``(height, width)`` (``resize``, ``crop``),
      ``(max_length,)`` (``text``, ``tokenize``).
    truncate: cut records longer than ``sizes`` (counted and reported) instead
      of raising.
    value: the padding value.
    method: ``resize``'s interpolation (``tf.image.resize`` methods).
    antialias: ``resize``'s antialiasing when downsampling.
    unit: ``text``: ``"byte"`` (UTF-8 bytes, uint8) or ``"codepoint"`` (int32).
    fn: ``tokenize``'s function ``str -> sequence of int``.
    cache_key: ``tokenize``: a name for ``fn`` (and its version) under which an
      eager load's result may be cached; None never caches.
  """

  kind: str
  sizes: tuple = ()
  truncate: bool = False
  value: Any = 0
  method: str = "bilinear"
  antialias: bool = False
  unit: str = "byte"
  fn: Callable[[str], Any] | None = None
  cache_key: str | None = None

  def describe(self) -> dict | None:
    """A JSON-able description for the cache key; None if it cannot be fingerprinted."""
    if self.kind == "tokenize" and self.cache_key is None:
      return None
    out = {"kind": self.kind, "sizes": list(self.sizes), "truncate": self.truncate,
           "value": float(self.value) if isinstance(self.value, float) else int(self.value)}
    if self.kind == "resize":
      out.update(method=self.method, antialias=self.antialias)
    if self.kind == "text":
      out["unit"] = self.unit
    if self.kind == "tokenize":
      out["cache_key"] = self.cache_key
    return out

  def __repr__(self) -> str:
    sizes = ", ".join("None" if s is None else str(s) for s in self.sizes)
    extra = {"pad": ", truncate=True" if self.truncate else "",
             "resize": f", method={self.method!r}" if self.method != "bilinear" else "",
             "crop": "", "text": f", unit={self.unit!r}" if self.unit != "byte" else "",
             "tokenize": ""}[self.kind]
    name = {"text": "encode_text"}.get(self.kind, self.kind)
    if self.kind == "tokenize":
      return f"tokenize({getattr(self.fn, '__name__', 'fn')}, {sizes})"
    return f"{name}({sizes}{extra})"


def _size(value: Any, what: str, *, allow_none: bool) -> int | None:
  if value is None and allow_none:
    return None
  if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
    extra = " or None (the longest record, eager loads only)" if allow_none else ""
    raise ValueError(f"Expected {what} to be a positive int{extra}, got {value!r}; pass the"
                     " fixed size you want.")
  return int(value)


def _scalar(value: Any, what: str) -> Any:
  if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, np.integer, np.floating)):
    raise TypeError(f"Expected {what} to be a number, got {value!r}; pass for example 0 or -1.")
  return value.item() if isinstance(value, np.generic) else value


def pad(*sizes: int | None, truncate: bool = False, value: int | float = 0) -> FixedShape:
  """Pads a feature's varying dimensions (or a Sequence's length) to fixed sizes.

  On a feature whose shape has ``k`` unknown dimensions (``None`` in TFDS's
  shape), give ``k`` sizes, in order; on a Sequence of features (coco's
  ``objects``), give one: all its fields share it. The true size is kept as
  a sibling feature: ``<name>_length`` (int32[], for one varying dimension or
  a Sequence) or ``<name>_shape`` (int32[rank], the record's original shape).
  A mask is ``jnp.arange(size) < length``.

  Args:
    *sizes: one positive int per varying dimension; ``None`` (or no sizes at
      all) pads to the longest record of the split, which only an eager load
      can know.
    truncate: cut longer records to the size, counted and reported, instead of
      raising an error that names the record.
    value: the padding value (default 0; ``False`` for booleans).

  Returns:
    A :class:`FixedShape` for ``shapes={name: ...}``.

  Example:
    >>> import tfds_jax
    >>> tfds_jax.pad(100)
    pad(100)
  """
  sizes = tuple(_size(s, "each size of pad", allow_none=True) for s in sizes)
  return FixedShape("pad", sizes, bool(truncate), _scalar(value, "pad's value"))


def resize(height: int, width: int, *, method: str = "bilinear", antialias: bool = False) -> FixedShape:
  """Resizes an image feature ``[H, W, C]`` of any size to ``[height, width, C]``.

  ``tf.image.resize`` with ``method``; integer images are rounded and clipped
  back to their dtype (uint8 stays uint8). The original shape is kept as
  ``<name>_shape`` (int32[3]). Boxes in TFDS's ``BBoxFeature`` are relative to
  the image, so they stay valid. Use ``method="nearest"`` for segmentation
  masks.

  Args:
    height: output height, a positive int.
    width: output width, a positive int.
    method: one of ``tf.image.ResizeMethod``'s: ``"bilinear"``, ``"nearest"``,
      ``"bicubic"``, ``"area"``, ``"lanczos3"``, ``"lanczos5"``,
      ``"gaussian"``, ``"mitchellcubic"``.
    antialias: antialias when downsampling.

  Returns:
    A :class:`FixedShape` for ``shapes={name: ...}``.

  Example:
    >>> import tfds_jax
    >>> tfds_jax.resize(224, 224)
    resize(224, 224)
  """
  if method not in _RESIZE_METHODS:
    raise ValueError(f"Expected method to be one of {list(_RESIZE_METHODS)}, got {method!r}.")
  sizes = (_size(height, "height", allow_none=False), _size(width, "width", allow_none=False))
  return FixedShape("resize", sizes, method=method, antialias=bool(antialias))


def crop(height: int, width: int) -> FixedShape:
  """Centre-crops an image feature ``[H, W, C]`` to ``[height, width, C]``, padding smaller ones.

  ``tf.image.resize_with_crop_or_pad``: each side larger than the target is
  cut evenly from both ends, each smaller one padded with zeros evenly on both
  ends. Pixels are never interpolated. The original shape is kept as
  ``<name>_shape`` (int32[3]).

  Args:
    height: output height, a positive int.
    width: output width, a positive int.

  Returns:
    A :class:`FixedShape` for ``shapes={name: ...}``.

  Example:
    >>> import tfds_jax
    >>> tfds_jax.crop(64, 64)
    crop(64, 64)
  """
  return FixedShape("crop", (_size(height, "height", allow_none=False),
                             _size(width, "width", allow_none=False)))


def encode_text(max_length: int | None = None, *, unit: str = "byte",
                truncate: bool = False) -> FixedShape:
  """Encodes a text feature as integer ids, padded to ``max_length``, without a tokenizer.

  ``unit="byte"``: the UTF-8 bytes as uint8 (256 ids); ``unit="codepoint"``:
  the Unicode code points as int32 (invalid UTF-8 becomes U+FFFD). Padding is
  0; the true length is kept as ``<name>_length`` (int32[]).

  Args:
    max_length: ids per record; None pads to the longest record of the split
      (eager loads only).
    unit: ``"byte"`` or ``"codepoint"``.
    truncate: cut longer texts, counted and reported, instead of raising.

  Returns:
    A :class:`FixedShape` for ``shapes={name: ...}``.

  Example:
    >>> import tfds_jax
    >>> tfds_jax.encode_text(512)
    encode_text(512)
  """
  if unit not in _TEXT_UNITS:
    raise ValueError(f"Expected unit to be one of {sorted(_TEXT_UNITS)}, got {unit!r}.")
  return FixedShape("text", (_size(max_length, "max_length", allow_none=True),), bool(truncate),
                    unit=unit)


def tokenize(fn: Callable[[str], Iterable[int]], max_length: int | None = None, *,
             truncate: bool = False, value: int = 0, cache_key: str | None = None) -> FixedShape:
  """Encodes a text feature with your own tokenizer, padded to ``max_length``.

  ``fn`` runs in Python on each record's text (decoded from UTF-8) and returns
  its token ids; an eager load runs it once per record at load time (and
  caches the result when ``cache_key`` names the tokenizer), a stream per
  record as batches are read. Ids are int32; the true length is kept as
  ``<name>_length`` (int32[]).

  Args:
    fn: ``fn(text: str) -> sequence of int``, pure.
    max_length: ids per record; None pads to the longest record of the split
      (eager loads only).
    truncate: cut longer id sequences, counted and reported, instead of raising.
    value: the padding id.
    cache_key: a name for ``fn`` and its vocabulary, e.g. ``"bert-base-uncased@v1"``;
      a cached eager load is reused only under the same name. None: never cached.

  Returns:
    A :class:`FixedShape` for ``shapes={name: ...}``.

  Example:
    >>> import tfds_jax
    >>> words = tfds_jax.tokenize(lambda text: [len(w) for w in text.split()], 64)
    >>> words.kind, words.sizes
    ('tokenize', (64,))
  """
  if not callable(fn):
    raise TypeError(f"Expected a tokenizer function str -> ids, got {fn!r}; pass a callable.")
  if cache_key is not None and not isinstance(cache_key, str):
    raise TypeError(f"Expected cache_key to be a str naming the tokenizer, got {cache_key!r}.")
  if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
    raise TypeError(f"Expected an int padding id, got {value!r}.")
  return FixedShape("tokenize", (_size(max_length, "max_length", allow_none=True),),
                    bool(truncate), int(value), fn=fn, cache_key=cache_key)


# --- Trees of features ------------------------------------------------------

def flatten(tree: Mapping[str, Any], prefix: Path = ()) -> dict[Path, Any]:
  """``{path: leaf}`` of a nested dict; a path is the tuple of keys down to the leaf.

  Example:
    >>> flatten({"image/filename": 1, "objects": {"bbox": 2}})
    {('image/filename',): 1, ('objects', 'bbox'): 2}
  """
  out = {}
  for key, value in tree.items():
    if isinstance(value, Mapping):
      out.update(flatten(value, prefix + (key,)))
    else:
      out[prefix + (key,)] = value
  return out


def unflatten(flat: Mapping[Path, Any]) -> dict[str, Any]:
  """The nested dict of ``{path: leaf}`` (inverse of :func:`flatten`)."""
  out: dict[str, Any] = {}
  for path, value in flat.items():
    node = out
    for key in path[:-1]:
      node = node.setdefault(key, {})
    node[path[-1]] = value
  return out


def name(path: Path) -> str:
  """How messages name a feature: as ``shapes=`` and ``features=`` take it, a top-level name
  or, for a nested feature, its path.

  Example:
    >>> name(("image/filename",)), name(("objects", "bbox"))
    ("'image/filename'", "('objects', 'bbox')")
  """
  return repr(ident(path))


def ident(path: Path) -> str | Path:
  """A feature as options take it: its top-level name, or its path when nested."""
  return path[0] if len(path) == 1 else tuple(path)


def as_path(feature: str | Path) -> Path:
  """A feature given by name (a top-level key, ``"image/filename"`` included) or path (a tuple)."""
  if isinstance(feature, str):
    return (feature,)
  if isinstance(feature, tuple) and feature and all(isinstance(k, str) for k in feature):
    return feature
  raise TypeError(f"Expected a feature name (str) or a path into nested features (a tuple of str"
                  f" such as ('objects', 'bbox')), got {feature!r}.")


def get(tree: Mapping[str, Any], feature: str | Path) -> Any:
  """The value (array, or dict of them) of ``feature`` in a nested batch or spec.

  Raises:
    KeyError: ``tree`` has no such feature (the message lists the top-level names).
  """
  node: Any = tree
  for key in as_path(feature):
    if not isinstance(node, Mapping) or key not in node:
      raise KeyError(f"Expected a feature {name(as_path(feature))} among {sorted(tree)} (nested"
                     " ones by path, e.g. ('objects', 'bbox')), got none; name one that exists.")
    node = node[key]
  return node


def put(tree: Mapping[str, Any], feature: str | Path, value: Any) -> dict[str, Any]:
  """A copy of ``tree`` with ``feature`` set to ``value`` (the inputs are not changed)."""
  path = as_path(feature)
  out = dict(tree)
  out[path[0]] = value if len(path) == 1 else put(tree.get(path[0], {}), path[1:], value)
  return out


def select(tree: Mapping[str, Any], features: Iterable[str | Path]) -> dict[str, Any]:
  """The nested sub-dict of ``tree`` holding only ``features`` (names or paths)."""
  out: dict[str, Any] = {}
  for feature in features:
    out = put(out, feature, get(tree, feature))
  return out


def plan_for(b, spec, keys: list[str], *, shapes, eager: bool, asked: set[str], label: str,
             what: str, user_fns: bool, peek) -> Plan:
  """:func:`plan` for the features ``keys`` of TFDS builder ``b``, decoded as ``spec``."""
  return plan(spec, shapes=shapes, sequences=sequence_paths(b.info.features, keys), eager=eager,
              asked=asked, top_keys=b.info.features.keys(), label=label, what=what,
              user_fns=user_fns, peek=peek)


def sequence_paths(features: Any, keys: Iterable[str]) -> set[Path]:
  """Paths of TFDS ``Sequence``s of several features among ``keys`` (their fields share a length)."""
  import tensorflow_datasets as tfds  # pylint: disable=import-outside-toplevel
  out: set[Path] = set()

  def visit(feature, path):
    if isinstance(feature, tfds.features.Sequence):
      if isinstance(feature.feature, tfds.features.FeaturesDict):
        out.add(path)
    elif isinstance(feature, tfds.features.FeaturesDict):
      for key, child in feature.items():
        visit(child, path + (key,))

  for key in keys:
    if key in features:
      visit(features[key], (key,))
  return out


# --- Planning ---------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Unit:
  """One fix: a :class:`FixedShape` applied at ``path`` (a leaf, or a Sequence's dict)."""

  path: Path
  fix: FixedShape
  leaves: tuple  # (path, var_dims, rank) of each leaf it covers; var_dims: the dims it fixes
  sibling: Path  # where the true length / original shape goes
  sizes: tuple  # the fixed size of each var dim (None: the longest record)

  @property
  def checks_overflow(self) -> bool:
    return self.fix.kind in ("pad", "text", "tokenize") and any(s is not None for s in self.sizes)


@dataclasses.dataclass(frozen=True)
class Plan:
  """What reading does to each record: which leaves stay, and which fixes apply.

  Attributes:
    units: the fixes, in a fixed order.
    kept: paths of the leaves read (strings without an encoding are left out).
    dropped: paths of the leaves left out.
    tf_dtypes: output path -> numpy dtype of the TensorFlow tensor read (before
      JAX's canonical dtype: int64, where ``spec`` may say int32).
    spec: output path -> ``(shape, numpy dtype)`` of one record in JAX's
      dtypes; a ``None`` dimension is padded to the longest record (eager).
    label: ``name[split]`` for messages.
  """

  units: tuple
  kept: tuple
  dropped: tuple
  spec: dict
  tf_dtypes: dict
  label: str

  @property
  def identity(self) -> bool:
    """True if reading changes nothing: every feature is kept, and fixed already."""
    return not self.units and not self.dropped

  @property
  def longest(self) -> bool:
    """True if some size is the longest record of the split (known only after reading)."""
    return any(None in u.sizes for u in self.units)


def _canonical(dtype: Any) -> np.dtype:
  return np.dtype(jax.dtypes.canonicalize_dtype(np.dtype(dtype)))


def _subtree(flat: Mapping[Path, Any], path: Path) -> dict[Path, Any]:
  return {p: v for p, v in flat.items() if p[:len(path)] == path and len(p) > len(path)}


def _var_dims(shape) -> tuple[int, ...] | None:
  """Indices of unknown dims, or None for an unknown rank."""
  if shape.rank is None:
    return None
  return tuple(i for i, d in enumerate(shape.as_list()) if d is None)


def plan(
    spec: Mapping[str, Any],
    *,
    shapes: Mapping[Any, FixedShape] | None,
    sequences: set[Path],
    eager: bool,
    asked: set[str],
    top_keys: Iterable[str],
    label: str,
    what: str,
    user_fns: bool,
    peek: Callable[[], list[dict]],
) -> Plan:
  """Decides, from a record's TensorFlow spec, what reading does to each feature.

  Args:
    spec: nested ``{name: tf.TensorSpec}`` of one decoded record (after the
      user's decoders and preprocess).
    shapes: the user's ``{name or path: FixedShape}``.
    sequences: paths of TFDS Sequences of features (fields share a length).
    eager: an eager load (sizes may default to the longest record).
    asked: top-level features the user asked for by name.
    top_keys: top-level features of the dataset (for suggestions).
    label: ``name[split]``.
    what: ``"an eager load"`` or ``"a stream"``, for messages.
    user_fns: the user gave decoders or preprocess (their shapes may be unknown).
    peek: returns a few decoded records (nested numpy), only to show sizes
      in error messages.

  Returns:
    A :class:`Plan`.

  Raises:
    ValueError: a feature whose shape cannot be fixed as asked, or stays
      unknown (the message lists each, with the option that fixes it).
  """
  import tensorflow as tf  # pylint: disable=import-outside-toplevel
  flat = flatten(spec)
  top_keys = set(top_keys)
  units: list[Unit] = []
  covered: dict[Path, Path] = {}

  for key, fix in (shapes or {}).items():
    path = _shape_path(key, flat, label)
    if not isinstance(fix, FixedShape):
      raise TypeError(f"Expected shapes[{key!r}] to be made by tfds_jax.pad, resize, crop,"
                      f" encode_text or tokenize, got {fix!r}.")
    unit = _unit(path, fix, flat, label, eager)
    for leaf in unit.leaves:
      if leaf[0] in covered:
        raise ValueError(f"Expected one shape per feature, got two for {name(leaf[0])} of {label}"
                         f" (from {name(covered[leaf[0]])} and {name(path)}); keep one.")
      covered[leaf[0]] = path
    units.append(unit)

  dropped, needs = [], []
  for path, s in flat.items():
    if path in covered:
      continue
    if not isinstance(s, tf.TensorSpec):
      needs.append((path, "ragged"))
    elif s.dtype == tf.string:
      if path == (path[0],) and path[0] in asked:
        needs.append((path, "string" if s.shape.rank == 0 else "strings"))
      else:
        dropped.append(path)
    elif _var_dims(s.shape) is None or _var_dims(s.shape):
      group = next((q for q in sequences if path[:len(q)] == q), None)
      if eager and group is not None:  # a TFDS Sequence of features: one shared length
        unit = _unit(group, FixedShape("pad", (None,)), flat, label, eager)
        units.append(unit)
        covered.update({leaf[0]: group for leaf in unit.leaves})
      elif eager and _var_dims(s.shape) is not None and len(_var_dims(s.shape)) == 1:
        units.append(_unit(path, FixedShape("pad", (None,)), flat, label, eager))
        covered[path] = path
      else:
        needs.append((path, "shape"))
  if needs:
    raise ValueError(_needs_message(needs, flat, sequences, eager, top_keys, asked, label, what,
                                    user_fns, peek))
  dropped = [p for p in dropped if p not in covered]
  if dropped:
    warnings.warn(
        f"Dropping string feature(s) {', '.join(name(p) for p in dropped)} of {label}: JAX arrays"
        " cannot hold strings; keep one as integer ids with shapes={name: tfds_jax.encode_text()}"
        " (or tokenize(fn)), or leave it out with exclude_keys to silence this.", stacklevel=5)

  out: dict[Path, tuple] = {}
  tf_dtypes: dict[Path, np.dtype] = {}
  kept = []
  for path, s in flat.items():
    if path in dropped:
      continue
    kept.append(path)
    tf_dtypes[path] = np.dtype(s.dtype.as_numpy_dtype)
    if path not in covered:
      out[path] = (tuple(s.shape.as_list()), _canonical(s.dtype.as_numpy_dtype))
  for unit in units:
    for leaf, dims, _ in unit.leaves:
      out[leaf] = _fixed_spec(unit, leaf, dims, flat[leaf])
      if unit.fix.kind in ("text", "tokenize"):
        tf_dtypes[leaf] = out[leaf][1]
    tf_dtypes[unit.sibling] = np.dtype(np.int32)
    out[unit.sibling] = ((), np.dtype(np.int32)) if unit.sibling[-1].endswith("_length") else \
        ((unit.leaves[0][2],), np.dtype(np.int32))
  siblings = [u.sibling for u in units]
  for unit in units:
    clash = unit.sibling in flat or siblings.count(unit.sibling) > 1 or unit.sibling[0] == PRIVATE
    if clash:
      raise ValueError(
          f"Expected no feature named {name(unit.sibling)} in {label}, since tfds_jax keeps the"
          f" true size of {name(unit.path)} there, got one; leave one of them out (exclude_keys, or"
          " rename it in preprocess).")
  if PRIVATE in spec:
    raise ValueError(f"Expected no feature named {PRIVATE!r} in {label}, got one; rename it.")
  return Plan(units=tuple(units), kept=tuple(kept), dropped=tuple(dropped), spec=out,
              tf_dtypes=tf_dtypes, label=label)


def _shape_path(key: Any, flat: Mapping[Path, Any], label: str) -> Path:
  path = (key,) if isinstance(key, str) else tuple(key) if isinstance(key, tuple) else None
  if path is None or not all(isinstance(k, str) for k in path):
    raise TypeError(f"Expected shapes keys to be feature names (str) or paths (tuples of str) such"
                    f" as ('objects', 'bbox'), got {key!r}.")
  if path not in flat and not _subtree(flat, path):
    known = sorted({p[0] for p in flat})
    raise ValueError(f"Expected shapes keys among the features of {label} {known} (or paths into"
                     f" them, as tuples), got unknown {name(path)}; use a name listed.")
  return path


def _unit(path: Path, fix: FixedShape, flat: Mapping[Path, Any], label: str, eager: bool) -> Unit:
  import tensorflow as tf  # pylint: disable=import-outside-toplevel
  where = f"{name(path)} of {label}"
  if not eager and any(s is None for s in fix.sizes) or not eager and not fix.sizes:
    raise ValueError(f"Expected every size of {fix!r} for {where} in a stream (a stream cannot know"
                     " the longest record without reading them all), got None; give the size.")
  sibling = path[:-1] + (path[-1] + ("_length" if fix.kind in ("text", "tokenize") else ""),)
  if path not in flat:  # a dict: a Sequence of features sharing one length
    if fix.kind != "pad" or len(fix.sizes) > 1:
      raise ValueError(f"Expected pad(length) for {where}, a group of features sharing one length,"
                       f" got {fix!r}; pass e.g. tfds_jax.pad(100).")
    leaves = []
    for leaf, s in _subtree(flat, path).items():
      dims = _var_dims(s.shape) if isinstance(s, tf.TensorSpec) else None
      if dims != (0,):
        shape = s.shape if isinstance(s, tf.TensorSpec) else "ragged"
        raise ValueError(f"Expected every field of {where} to vary in its first dimension only,"
                         f" got {name(leaf)} of shape {shape}; pad the group only if its fields"
                         " share one length (a TFDS Sequence of features), else pad each field.")
      if s.dtype != tf.string:  # strings in a Sequence are left out (with a warning)
        leaves.append((leaf, (0,), s.shape.rank))
    if not leaves:
      raise ValueError(f"Expected numeric fields in {where}, got only strings; leave it out.")
    sizes = fix.sizes or (None,)
    return Unit(path, fix, tuple(leaves), path[:-1] + (path[-1] + "_length",), sizes)
  s = flat[path]
  if not isinstance(s, tf.TensorSpec):
    raise ValueError(f"Expected a dense feature for {fix!r} at {where}, got a ragged one ({s});"
                     " make it dense in preprocess (e.g. .to_tensor()), or leave it out.")
  is_string = s.dtype == tf.string
  if fix.kind in ("text", "tokenize"):
    if not is_string or s.shape.rank != 0:
      raise ValueError(f"Expected a text feature (a scalar string) for {fix!r} at {where}, got"
                       f" {s.dtype.name}{s.shape}; use pad, resize or crop for numeric features.")
    return Unit(path, fix, ((path, (0,), 1),), sibling, fix.sizes)
  if is_string:
    raise ValueError(f"Expected a numeric feature for {fix!r} at {where}, got a string; encode it"
                     " with tfds_jax.encode_text(max_length) or tokenize(fn, max_length).")
  dims = _var_dims(s.shape)
  if fix.kind in ("resize", "crop"):
    if s.shape.rank != 3:
      raise ValueError(f"Expected an image [height, width, channels] for {fix!r} at {where}, got"
                       f" shape {s.shape}; use pad for other features.")
    return Unit(path, fix, ((path, (0, 1), 3),), path[:-1] + (path[-1] + "_shape",), fix.sizes)
  if dims is None:
    raise ValueError(f"Expected a known rank for {where}, got an unknown one; fix its rank in"
                     " preprocess, e.g. x = tf.ensure_shape(x, [None, 3]).")
  if not dims:
    raise ValueError(f"Expected a feature with varying dimensions for {fix!r} at {where}, got the"
                     f" fixed shape {tuple(s.shape.as_list())}; leave it out of shapes.")
  sizes = fix.sizes or (None,) * len(dims)
  if len(sizes) != len(dims):
    raise ValueError(f"Expected {len(dims)} size(s) for {where}, one per varying dimension of its"
                     f" shape {tuple(s.shape.as_list())}, got {fix!r}.")
  suffix = "_length" if len(dims) == 1 else "_shape"
  return Unit(path, fix, ((path, dims, s.shape.rank),), path[:-1] + (path[-1] + suffix,), sizes)


def _fixed_spec(unit: Unit, leaf: Path, dims: tuple, s) -> tuple:
  if unit.fix.kind in ("text", "tokenize"):
    dtype = _TEXT_UNITS[unit.fix.unit] if unit.fix.kind == "text" else np.int32
    return (unit.sizes[0],), np.dtype(dtype)
  shape = list(s.shape.as_list())
  for d, size in zip(dims, unit.sizes):
    shape[d] = size
  return tuple(shape), _canonical(s.dtype.as_numpy_dtype)


def _needs_message(needs, flat, sequences, eager, top_keys, asked, label, what, user_fns, peek) -> str:
  seen = _seen_sizes(peek, [p for p, _ in needs])
  parts, options, leave_out = [], [], []
  done_groups = set()
  for path, why in needs:
    group = next((q for q in sequences if path[:len(q)] == q), None)
    s = flat[path]
    sizes = seen.get(path)
    if why == "string":
      longest = max((len(v) for v in sizes), default=0) if sizes else None
      parts.append(f"{name(path)} (text, asked for by name: JAX arrays hold numbers only)")
      options.append(f'{name(path)}: tfds_jax.encode_text({longest or "MAX_LENGTH"})')
      continue
    if why in ("ragged", "strings"):
      what_ = "ragged: nested variable lengths" if why == "ragged" else "a sequence of strings"
      parts.append(f"{name(path)} ({what_}, which tfds_jax cannot make static)")
      if path[0] in top_keys and path[0] not in asked:
        leave_out.append(path[0])
      continue
    shape = tuple(s.shape.as_list()) if s.shape.rank is not None else "unknown rank"
    seen_text = f", shapes seen {sorted(set(sizes))[:4]}" if sizes else ""
    if group is not None:
      if group in done_groups:
        continue
      done_groups.add(group)
      lengths = sorted({v[0] for v in sizes}) if sizes else []
      longest = max(lengths, default=None)
      seen_text = f", lengths seen {lengths[:6]}" if lengths else ""
      parts.append(f"{name(group)} (a Sequence: its fields share one length{seen_text})")
      options.append(f"{name(group)}: tfds_jax.pad({longest or 'LENGTH'})")
    else:
      parts.append(f"{name(path)} (shape {shape}{seen_text})")
      dims = _var_dims(s.shape) or ()
      if s.shape.rank == 3 and dims and set(dims) <= {0, 1}:
        h = max((v[0] for v in sizes), default=None) if sizes else None
        w = max((v[1] for v in sizes), default=None) if sizes else None
        hint = f"{h}, {w}" if h else "HEIGHT, WIDTH"
        options.append(f"{name(path)}: tfds_jax.resize({hint})")
      elif dims:
        longest = [max((v[d] for v in sizes), default=None) if sizes else None for d in dims]
        hint = ", ".join(str(x) if x else "SIZE" for x in longest)
        options.append(f"{name(path)}: tfds_jax.pad({hint})")
    if path[0] in top_keys and path[0] not in asked and path[0] not in leave_out:
      leave_out.append(path[0])
  shaped = [why for _, why in needs if why == "shape"]
  kind = "" if not shaped else " (an eager load pads only what varies in one dimension, to the longest" \
      " record; other sizes must be given)" if eager else " (a stream needs every size given)"
  text = f"Expected a static shape for every feature in {what} of {label}{kind}, got {'; '.join(parts)}"
  fixes = []
  if options:
    fixes.append(f"pass shapes={{{', '.join(options)}}} (sizes: the largest in the first records)")
  if user_fns:
    fixes.append("if your decoders or preprocess already make a feature fixed, declare its"
                 " static shape there with x = tf.ensure_shape(x, [...])")
  if leave_out:
    fixes.append(f"or leave them out with exclude_keys={sorted(set(leave_out))}")
  return text + "; " + ", ".join(fixes) + "."


def _seen_sizes(peek, paths) -> dict[Path, list]:
  """Shapes (or text lengths) of ``paths`` in a few records, best effort (only for messages)."""
  try:
    records = peek()
  except Exception:  # pylint: disable=broad-except  # a message helper must not hide the real error
    return {}
  seen: dict[Path, list] = {}
  for record in records:
    flat = flatten(record)
    for path in paths:
      if path in flat:
        v = flat[path]
        seen.setdefault(path, []).append(
            v if isinstance(v, bytes) else tuple(np.shape(v)))
  return seen


# --- Applying a plan --------------------------------------------------------

def apply(plan_: Plan, record: Mapping[str, Any], *, pad: bool = True) -> dict[str, Any]:
  """The TensorFlow half: one decoded record made static (run per record in TF).

  Keeps the planned leaves, applies each unit, adds the siblings, and (when a
  size may be exceeded) the true sizes under ``PRIVATE`` for :func:`check`.
  With ``pad=False`` records longer than a size are cut to it but shorter ones
  are left for ``padded_batch`` with :func:`padding` to pad, which does it in
  one step per batch.
  """
  import tensorflow as tf  # pylint: disable=import-outside-toplevel
  flat = flatten(record)
  out = {p: flat[p] for p in plan_.kept}
  for i, unit in enumerate(plan_.units):
    kind = unit.fix.kind
    if kind in ("resize", "crop"):
      x = flat[unit.path]
      true = _shape_of(x)
      out[unit.path] = _resize(x, unit.fix) if kind == "resize" else \
          tf.image.resize_with_crop_or_pad(x, *unit.fix.sizes)
      out[unit.sibling] = true  # the original shape, to map boxes and masks back
    else:  # pad (a leaf, or a Sequence's fields along their shared first dim), text, tokenize
      if kind in ("text", "tokenize"):
        flat = {**flat, unit.path: _encode(flat[unit.path], unit.fix)}
      first, dims, _ = unit.leaves[0]
      shape = _shape_of(flat[first])
      true = tf.stack([shape[d] for d in dims])
      kept = [shape[d] if s is None else tf.minimum(shape[d], s) for d, s in zip(dims, unit.sizes)]
      for leaf, leaf_dims, _ in unit.leaves:
        out[leaf] = _cut_and_pad(flat[leaf], leaf_dims, unit.sizes, kept, unit.fix.value, pad)
      out[unit.sibling] = kept[0] if unit.sibling[-1].endswith("_length") else \
          tf.stack([kept[dims.index(d)] if d in dims else shape[d] for d in range(unit.leaves[0][2])])
    if pad or kind in ("resize", "crop"):
      for leaf, _, _ in unit.leaves:
        out[leaf].set_shape(plan_.spec[leaf][0])  # static by construction
    if unit.checks_overflow:
      out[(PRIVATE, str(i))] = true
  return unflatten(out)


def applier(plan_: Plan, *, pad: bool = True) -> Callable[[Mapping[str, Any]], dict]:
  """:func:`apply` with ``plan_`` as a function TensorFlow traces without AutoGraph
  (nothing in it needs AutoGraph, and converting it took about a second per stream)."""
  import tensorflow as tf  # pylint: disable=import-outside-toplevel

  def static(record):
    return apply(plan_, record, pad=pad)

  return tf.autograph.experimental.do_not_convert(static)


def padding(plan_: Plan) -> tuple[dict, dict]:
  """``(padded_shapes, padding_values)`` for ``padded_batch`` of records made by
  ``apply(plan_, record, pad=False)``: every feature at its planned size (``None``
  for the longest record of the batch), padded with its option's value."""
  import tensorflow as tf  # pylint: disable=import-outside-toplevel
  values = {leaf: u.fix.value for u in plan_.units for leaf, _, _ in u.leaves}
  shapes, pads = {}, {}
  for path, (shape, dtype) in plan_.spec.items():
    shapes[path] = tf.TensorShape(shape)
    pads[path] = tf.cast(values.get(path, 0), tf.as_dtype(plan_.tf_dtypes[path]))
  for i, unit in enumerate(plan_.units):
    if unit.checks_overflow:
      shapes[(PRIVATE, str(i))] = tf.TensorShape([len(unit.sizes)])
      pads[(PRIVATE, str(i))] = tf.constant(0, tf.int32)
  return unflatten(shapes), unflatten(pads)


def _shape_of(x):
  """int32 shape of ``x`` as a plain tensor (``tf.shape``'s own type upsets ``map_fn``'s type checks)."""
  import tensorflow as tf  # pylint: disable=import-outside-toplevel
  return tf.cast(tf.shape(x, out_type=tf.int64), tf.int32)


def _encode(text, fix: FixedShape):
  import tensorflow as tf  # pylint: disable=import-outside-toplevel
  if fix.kind == "text":
    if fix.unit == "byte":
      return tf.io.decode_raw(text, tf.uint8)
    return tf.strings.unicode_decode(text, "UTF-8", errors="replace")
  fn = fix.fn

  def run(raw: bytes) -> np.ndarray:
    ids = fn(raw.decode("utf-8", errors="replace"))
    out = np.asarray(ids)
    if out.ndim != 1 or (out.size and not np.issubdtype(out.dtype, np.integer)):
      raise ValueError(f"Expected the tokenizer {fn!r} to return a 1-D sequence of int ids, got"
                       f" {type(ids).__name__} of shape {out.shape} and dtype {out.dtype}.")
    info = np.iinfo(np.int32)
    if out.size and (out.min() < info.min or out.max() > info.max):
      raise ValueError(f"Expected token ids within int32, got [{out.min()}, {out.max()}].")
    return out.astype(np.int32)

  ids = tf.numpy_function(run, [text], tf.int32, stateful=False)
  ids.set_shape([None])
  return ids


def _cut_and_pad(x, dims: tuple, sizes: tuple, kept: list, value, pad: bool):
  """``x`` cut to ``sizes`` along ``dims`` (``kept``: its sizes after the cut) and, with
  ``pad``, padded with ``value`` up to them (a ``None`` size: left as it is)."""
  import tensorflow as tf  # pylint: disable=import-outside-toplevel
  if all(s is None for s in sizes):
    return x
  cut = [slice(None)] * x.shape.rank
  for d, s in zip(dims, sizes):
    if s is not None:
      cut[d] = slice(0, s)
  x = x[tuple(cut)]
  if not pad:
    return x
  paddings = [[0, 0]] * x.shape.rank
  for d, s, k in zip(dims, sizes, kept):
    if s is not None:
      paddings[d] = [0, s - k]
  return tf.pad(x, paddings, constant_values=tf.cast(value, x.dtype))


def _resize(x, fix: FixedShape):
  import tensorflow as tf  # pylint: disable=import-outside-toplevel
  out = tf.image.resize(x, fix.sizes, method=fix.method, antialias=fix.antialias)
  if x.dtype.is_integer:
    info = np.iinfo(x.dtype.as_numpy_dtype)
    out = tf.cast(tf.clip_by_value(tf.round(out), info.min, info.max), x.dtype)
  elif out.dtype != x.dtype:
    out = tf.cast(out, x.dtype)
  return out


def check(plan_: Plan, batch: Mapping[str, Any], describe_row: Callable[[int], str],
          truncated: dict[Path, int] | None = None) -> dict[str, Any]:
  """The Python half: checks sizes against the plan and removes the bookkeeping.

  A record longer than its fixed size is an error naming it (via
  ``describe_row(row)``), unless its option truncates; then it is counted in
  ``truncated`` (path -> records).

  Args:
    plan_: the plan the batch was read with.
    batch: a decoded batch (TF tensors or numpy), as :func:`apply` left it.
    describe_row: row of the batch -> which record it is, for messages.
    truncated: counts to add to.

  Returns:
    The batch without the bookkeeping.

  Raises:
    ValueError: a record exceeds a size and its option does not truncate.
  """
  if PRIVATE not in batch:
    return dict(batch)
  private = batch[PRIVATE]
  for i, unit in enumerate(plan_.units):
    if not unit.checks_overflow:
      continue
    true = np.asarray(private[str(i)]).reshape(-1, len(unit.sizes))
    limit = np.array([s if s is not None else np.iinfo(np.int32).max for s in unit.sizes])
    over = np.flatnonzero((true > limit).any(axis=1))
    if not over.size:
      continue
    if not unit.fix.truncate:
      row = int(over[0])
      got = tuple(int(t) for t in true[row])
      raise ValueError(
          f"Expected {name(unit.path)} of {plan_.label} to fit {unit.fix!r}, got"
          f" {describe_row(row)} with size {got[0] if len(got) == 1 else got}"
          f"{f' ({over.size} records of this batch too long)' if over.size > 1 else ''};"
          " pass a larger size, or truncate=True to cut such records (they are counted).")
    if truncated is not None:
      truncated[unit.path] = truncated.get(unit.path, 0) + int(over.size)
  return {k: v for k, v in batch.items() if k != PRIVATE}


def report_truncated(plan_: Plan, truncated: Mapping[Path, int], total: int | None = None) -> None:
  """Logs how many records each truncating option cut (a warning: data was cut)."""
  units = {u.path: u for u in plan_.units}
  for path, count in truncated.items():
    of = f" of {total:,}" if total is not None else ""
    log.warning("truncated %d record(s)%s of %s to %r (truncate=True)", count, of,
                f"{name(path)} in {plan_.label}", units[path].fix)


def cache_key(shapes: Mapping[Any, FixedShape] | None) -> list | None:
  """The JSON-able part of the cache key for ``shapes``; None if it cannot be cached."""
  out = []
  for key, fix in sorted((shapes or {}).items(), key=lambda kv: repr(kv[0])):
    described = fix.describe() if isinstance(fix, FixedShape) else None
    if described is None:
      return None
    out.append([list(key) if isinstance(key, tuple) else key, described])
  return out


def longest_padding(plan_: Plan, chunks: list[dict[Path, np.ndarray]], total: int,
                    empty: Callable[[tuple, np.dtype], np.ndarray]) -> dict[Path, np.ndarray]:
  """Joins chunks read with ``None`` sizes into arrays padded to the split's longest record.

  Each chunk was padded (with the unit's value) to its own longest record; the
  result holds, per path, ``[total, *shape]`` with every ``None`` dimension the
  largest of any chunk. Chunks are released as they are copied.
  """
  paths = list(chunks[0]) if chunks else list(plan_.spec)
  values = {leaf: u.fix.value for u in plan_.units for leaf, _, _ in u.leaves}
  shapes = {p: tuple(np.max([c[p].shape[1:] for c in chunks], axis=0)) if chunks else tuple(
      0 if d is None else d for d in plan_.spec[p][0]) for p in paths}
  for unit in plan_.units:  # the fields of a Sequence share one length
    if len(unit.leaves) > 1 and unit.sizes == (None,):
      longest = max(shapes[leaf][0] for leaf, _, _ in unit.leaves)
      for leaf, _, _ in unit.leaves:
        shapes[leaf] = (longest,) + shapes[leaf][1:]
  out = {}
  for path in paths:
    shape = shapes[path]
    dtype = chunks[0][path].dtype if chunks else plan_.spec[path][1]
    array = empty((total, *shape), dtype)
    pos = 0
    for c in chunks:
      part = c.pop(path)
      m = len(part)
      if part.shape[1:] != shape:
        array[pos:pos + m] = values.get(path, 0)
        array[(slice(pos, pos + m),) + tuple(slice(0, d) for d in part.shape[1:])] = part
      else:
        array[pos:pos + m] = part
      pos += m
    out[path] = array
  return out
