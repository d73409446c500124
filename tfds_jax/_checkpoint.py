"""Saving and strictly restoring a :class:`SourceState`.

The state is already a plain pytree of scalars, so ``np.savez`` or orbax save
it as it is. :func:`state_to_dict` adds what a restore must check, as plain
Python ints (so ``json.dump``, ``np.savez`` and orbax's ``StandardCheckpointer``
and ``JsonSave`` all take the dict as it is), and :func:`state_from_dict`
refuses anything that does not match, instead of silently starting over.

What identifies the data (the ``"data"`` field, a 63-bit fingerprint):

* a TFDS dataset (made by ``load``, ``stream`` or ``from_tfds``, cached or
  not): its name and config, version, split string (slices included) and the
  split's shard lengths and byte count from the prepared ``dataset_info.json``,
  so a copy of the prepared files on another machine is the same data, while a
  re-preparation that changed the split is not; a tf.data stream adds its mode
  and shuffle buffer (its order differs from the index order of the others);
* a ``from_arrays`` source: the ``name`` and ``split`` you gave it (its
  explicit identity). An unnamed source has an empty identity, so its
  checkpoint restores only into an unnamed source.

Nothing is read from the records for this: saving and checking cost a small
JSON read at most. ``state_to_dict(..., content=True)`` also fingerprints the
arrays themselves (one pass over an in-memory source's data), and a restore of
such a checkpoint checks them again.
"""

from __future__ import annotations

import hashlib
import json
import os
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import numpy as np

from tfds_jax._source import Source, SourceState
from tfds_jax._source import _num_records as _source_num_records

_FORMAT = 2
_REQUIRED = ("format", "num_records", "epoch", "index", "shuffle", "data")
_OPTIONAL = ("seed", "content")
_SAVE = "save states with tfds_jax.state_to_dict"


def state_to_dict(source: Any, state: SourceState, *, content: bool = False) -> dict[str, int]:
  """Returns the state and what identifies its data, as a flat dict of Python ints.

  The dict saves as it is with ``json.dump``, ``np.savez``, orbax's
  ``StandardCheckpointer`` or ``args.StandardSave`` / ``args.JsonSave`` (next
  to the model's state in one ``CheckpointManager``), or as part of any pytree.

  Args:
    source: the :class:`Source`, :class:`Pipeline` or :class:`Stream` the
      state iterates.
    state: its :class:`SourceState`, concrete (call this outside ``jit``, on
      the state a jitted step returned).
    content: also fingerprint the records themselves (one pass over an
      in-memory source's arrays); a restore then checks them too. By default
      the data is identified by its name, version and split, without reading
      it (see the module docstring).

  Returns:
    ``{"format", "num_records", "epoch", "index", "shuffle", "data"}``, plus
    ``"seed"`` when the state has one and ``"content"`` when asked for.

  Raises:
    TypeError: ``state`` is not a :class:`SourceState`, is traced (inside
      ``jit``), or holds non-integer fields; ``content=True`` on a stream.
    ValueError: the state does not fit ``source``: a negative epoch, an
      index outside ``[0, num_records)``, a seed outside ``[0, 2**32)``, or
      no seed for a pipeline.

  Example:
    >>> import json, numpy as np, tfds_jax
    >>> src = tfds_jax.from_arrays({"x": np.arange(10)})
    >>> d = tfds_jax.state_to_dict(src, tfds_jax.init(src, seed=3, shuffle=True))
    >>> sorted(d)
    ['data', 'epoch', 'format', 'index', 'num_records', 'seed', 'shuffle']
    >>> tfds_jax.state_from_dict(src, json.loads(json.dumps(d))).seed
    Array(3, dtype=uint32)
  """
  fields = _concrete_state(state)
  n = _num_records(source)
  epoch, index, seed = fields["epoch"], fields["index"], fields["seed"]
  hint = (f"it does not belong to {_describe(source)}; save the state of this source, made by"
          " tfds_jax.init and advanced by next_batch")
  if epoch < 0:
    raise ValueError(f"Expected a state with epoch >= 0, got epoch {epoch}; {hint}.")
  if not 0 <= index < n:
    raise ValueError(f"Expected a state with 0 <= index < {n} (the records of"
                     f" {_describe(source)}), got index {index}; {hint}.")
  if seed is not None and not 0 <= seed < 2**32:
    raise ValueError(f"Expected a state seed in [0, 2**32), got {seed}; {hint}.")
  shuffle = _shuffles(source, seed)
  out = {"format": _FORMAT, "num_records": n, "epoch": epoch, "index": index,
         "shuffle": int(shuffle), "data": _fingerprint(identity(source))}
  if seed is not None:
    out["seed"] = seed
  if content:
    out["content"] = content_fingerprint(source)
  return out


def state_from_dict(
    source: Any,
    d: Mapping[str, Any],
    *,
    shuffle: bool | None = None,
) -> SourceState:
  """Restores a state saved by :func:`state_to_dict`, checking it fits ``source``.

  Args:
    source: the source the restored run will read (:class:`Source`,
      :class:`Pipeline` or :class:`Stream`).
    d: the saved dict, as ``json.load``, ``dict(np.load(path))`` or orbax's
      restore gives it back (ints, numpy or JAX integer scalars).
    shuffle: if given, whether the run being resumed shuffles; a checkpoint of
      the other kind is an error. A pipeline checks its own setting.

  Returns:
    The saved :class:`SourceState`; the next :func:`next_batch` gives the batch
    an uninterrupted run would have given.

  Raises:
    TypeError: if ``d`` is not a mapping.
    ValueError: if fields are missing or unknown, have the wrong dtype or range,
      the checkpoint was saved for other data (another dataset, version, split,
      size or ``from_arrays`` identity), or with another shuffle setting.

  Example:
    >>> import numpy as np, tfds_jax
    >>> src = tfds_jax.from_arrays({"x": np.arange(10)})
    >>> state = tfds_jax.init(src, seed=3, shuffle=True)
    >>> restored = tfds_jax.state_from_dict(src, tfds_jax.state_to_dict(src, state))
    >>> int(restored.seed)
    3
  """
  if not isinstance(d, Mapping):
    raise TypeError(f"Expected a dict saved by state_to_dict, got {type(d).__name__}; load it"
                    " with json.load(f), dict(np.load(path)) or orbax's restore.")
  fmt = _int_field(d, "format", 0, 2**31, "this is not a tfds_jax checkpoint") if "format" in d else None
  if fmt is not None and fmt != _FORMAT:
    raise ValueError(
        f"Expected checkpoint format {_FORMAT}, got {fmt}; it was written by another version"
        " of tfds_jax (format 1: tfds_jax 0.1.0, which recorded no data identity): resume"
        " with that version, or restart the run.")
  missing = [k for k in _REQUIRED if k not in d]
  unknown = sorted(set(d) - set(_REQUIRED) - set(_OPTIONAL))
  if missing or unknown:
    raise ValueError(
        f"Expected checkpoint fields {list(_REQUIRED)} (and optionally {list(_OPTIONAL)}), got"
        f" {sorted(d)} (missing {missing}, unknown {unknown}); {_SAVE}.")
  n = _num_records(source)
  again = "restore it into the source it was saved from (same dataset, version and split)"
  saved_n = _int_field(d, "num_records", 1, 2**63, "the checkpoint is damaged")
  if saved_n != n:
    raise ValueError(f"Expected a checkpoint for {n} records ({_describe(source)}), got one"
                     f" saved for {saved_n} records; {again}.")
  data = _int_field(d, "data", 0, 2**63, "the checkpoint is damaged")
  if data != _fingerprint(identity(source)):
    raise ValueError(
        f"Expected a checkpoint of {_describe(source)} (data fingerprint"
        f" {_fingerprint(identity(source))}), got one saved for other data of the same size"
        f" (fingerprint {data}); {again}. A from_arrays source is identified by its name= and"
        " split=: give them as when the checkpoint was saved.")
  if "content" in d:
    saved = _int_field(d, "content", 0, 2**63, "the checkpoint is damaged")
    if saved != content_fingerprint(source):
      raise ValueError(f"Expected the records the checkpoint was saved with (content fingerprint"
                       f" {saved}), got other records in {_describe(source)}; {again}.")
  epoch = _int_field(d, "epoch", 0, 2**31, "the checkpoint is damaged")
  index = _int_field(d, "index", 0, n, "the checkpoint is damaged")
  saved_shuffle = bool(_int_field(d, "shuffle", 0, 2, "the checkpoint is damaged"))
  seed = _int_field(d, "seed", 0, 2**32, "the checkpoint is damaged") if "seed" in d else None
  if saved_shuffle and seed is None:
    raise ValueError(f"Expected a seed in a shuffled checkpoint, got none; {_SAVE}.")
  pipeline_shuffle = getattr(source, "shuffle", None) if _is_pipeline(source) else None
  for want in (shuffle, pipeline_shuffle):
    if want is not None and want != saved_shuffle:
      saved = "a shuffled" if saved_shuffle else "an unshuffled"
      raise ValueError(f"Expected a checkpoint with shuffle={want}, got {saved} one; resume with"
                       " the shuffle setting the run was started with.")
  if _is_pipeline(source):
    if seed is None:
      raise ValueError("Expected a checkpoint with a seed for a pipeline (its stages need one), got"
                       " one saved from an unshuffled source; restore it into that source.")
  elif not saved_shuffle:
    seed = None  # a pipeline's unshuffled state keeps its seed for the stages only
  return SourceState(epoch=jnp.asarray(epoch, jnp.int32), index=jnp.asarray(index, jnp.int32),
                     seed=None if seed is None else jnp.asarray(seed, jnp.uint32))


def identity(source: Any) -> str:
  """The text :func:`state_to_dict` fingerprints to identify ``source``'s data.

  Args:
    source: a :class:`Source`, :class:`Pipeline` or :class:`Stream`.

  Returns:
    For TFDS data, ``"tfds:NAME:VERSION:SPLIT:..."`` with the split's shard
    lengths and bytes from ``dataset_info.json``; for ``from_arrays`` sources,
    ``"arrays:NAME:SPLIT"`` (``"arrays::"`` when unnamed).

  Example:
    >>> import numpy as np, tfds_jax
    >>> identity(tfds_jax.from_arrays({"x": np.arange(3)}, name="toy", split="train"))
    'arrays:toy:train'
  """
  inner = source.source if _is_pipeline(source) else source
  name, split = getattr(inner, "name", None), getattr(inner, "split", None)
  data_dir = getattr(getattr(inner, "info", None), "data_dir", None)  # a DatasetInfoRef
  if data_dir is None:
    return f"arrays:{name or ''}:{split or ''}"
  text = f"tfds:{name}:{_split_identity(data_dir, split)}"
  if getattr(inner, "mode", None) == "tf.data":  # file order through a shuffle buffer
    text += f":tf.data:{getattr(getattr(inner, '_reader', None), '_shuffle_buffer', None)}"
  return text


def content_fingerprint(source: Any) -> int:
  """A 63-bit fingerprint of an in-memory source's arrays (one pass over them).

  Raises:
    TypeError: for a :class:`Stream` (its records are on disk).
  """
  inner = source.source if _is_pipeline(source) else source
  data = inner.data if isinstance(inner, Source) else inner
  if not isinstance(data, Mapping):
    raise TypeError(f"Expected an in-memory source for content=True, got {type(inner).__name__};"
                    " a stream's records are on disk: leave content=False (its dataset,"
                    " version and split still identify it).")
  h = hashlib.blake2b(digest_size=8)
  for key in sorted(data):
    value = np.asarray(jax.device_get(data[key]))
    h.update(f"{key}:{value.dtype.str}:{value.shape};".encode())
    h.update(np.ascontiguousarray(value).view(np.uint8).reshape(-1).data)
  return int.from_bytes(h.digest(), "big") >> 1


def _split_identity(data_dir: str, split: str | None) -> str:
  """``VERSION:SPLIT:lengths:bytes`` from ``dataset_info.json`` (no TensorFlow)."""
  base = (split or "").split("[")[0]
  try:
    with open(os.path.join(data_dir, "dataset_info.json")) as f:
      info = json.load(f)
  except (OSError, ValueError):
    return f"{os.path.basename(os.path.normpath(data_dir))}:{split}"
  entry = next((s for s in info.get("splits", []) if s.get("name") == base), {})
  lengths = ",".join(str(x) for x in entry.get("shardLengths", []))
  return f"{info.get('version')}:{split}:{lengths}:{entry.get('numBytes')}"


def _fingerprint(text: str) -> int:
  return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "big") >> 1


def _concrete_state(state: Any) -> dict[str, int | None]:
  if not isinstance(state, SourceState):
    raise TypeError(f"Expected a SourceState (from tfds_jax.init or next_batch), got"
                    f" {type(state).__name__}; pass the state, not a dict or array (restore dicts"
                    " with tfds_jax.state_from_dict).")
  out: dict[str, int | None] = {}
  for field, value in zip(state._fields, state):
    if value is None and field == "seed":
      out[field] = None
      continue
    if isinstance(value, jax.core.Tracer):
      raise TypeError(
          f"Expected a concrete SourceState, got a traced {field} ({value.aval}): state_to_dict"
          " cannot run inside jit, vmap or a loop body; return the state from your jitted"
          " function and save it outside.")
    array = np.asarray(value)
    if array.shape != () or not np.issubdtype(array.dtype, np.integer):
      raise TypeError(
          f"Expected SourceState.{field} to be an integer scalar, got {array.dtype}"
          f"{list(array.shape)}; save one state at a time (for vmapped states, save"
          " jax.tree.map(lambda x: x[k], states) for each k) made by tfds_jax.init.")
    out[field] = int(array)
  return out


def _shuffles(source: Any, seed: int | None) -> bool:
  if not _is_pipeline(source):
    return seed is not None
  if seed is None:
    raise ValueError(f"Expected a state with a seed for the pipeline over {_describe(source)}, got"
                     " seed=None; use the state tfds_jax.init(pipeline, seed=...) returned.")
  return bool(source.shuffle)


def _int_field(d: Mapping[str, Any], key: str, low: int, high: int, hint: str) -> int:
  value = d[key]
  array = np.asarray(value)
  if isinstance(value, bool) or array.shape != () or not np.issubdtype(array.dtype, np.integer):
    raise ValueError(
        f"Expected checkpoint field {key!r} to be an integer scalar, got {type(value).__name__}"
        f" {array.dtype}{list(array.shape)}; {_SAVE}.")
  if not low <= int(array) < high:
    raise ValueError(f"Expected checkpoint field {key!r} in [{low}, {high}), got {int(array)}; {hint}.")
  return int(array)


def _num_records(source: Any) -> int:
  return int(source.num_records if hasattr(source, "num_records") else _source_num_records(source))


def _is_pipeline(source: Any) -> bool:
  return hasattr(source, "stages") and hasattr(source, "source")


def _describe(source: Any) -> str:
  inner = source.source if _is_pipeline(source) else source
  name, split = getattr(inner, "name", None), getattr(inner, "split", None)
  if name is None and split is None:
    return "an unnamed from_arrays source"
  return f"{name}[{split}]"
