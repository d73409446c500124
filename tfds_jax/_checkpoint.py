"""Saving and strictly restoring a :class:`SourceState`.

The state is already a plain pytree of scalars, so ``np.savez`` or orbax save
it as it is. :func:`state_to_dict` adds what a restore must check (the dataset's
size and identity), and :func:`state_from_dict` refuses anything that does not
match, instead of silently starting over.
"""

from __future__ import annotations

from typing import Any, Mapping

import jax.numpy as jnp
import numpy as np

from tfds_jax._source import Source, SourceState

_FORMAT = 1
_REQUIRED = ("format", "num_records", "epoch", "index")
_OPTIONAL = ("seed", "name", "split")


def state_to_dict(source: Source, state: SourceState) -> dict[str, np.ndarray]:
  """Returns the state as a flat dict of numpy scalars, ready for ``np.savez``.

  Args:
    source: the source the state iterates (its size and name are recorded).
    state: the :class:`SourceState` to save.

  Returns:
    ``{"format", "num_records", "epoch", "index"}`` plus ``"seed"`` when the
    state shuffles and ``"name"`` / ``"split"`` when the source has them.

  Example:
    >>> import numpy as np, tfds_jax
    >>> src = tfds_jax.from_arrays({"x": np.arange(10)})
    >>> d = tfds_jax.state_to_dict(src, tfds_jax.init(src, seed=3, shuffle=True))
    >>> sorted(d)
    ['epoch', 'format', 'index', 'num_records', 'seed']
  """
  out = {
      "format": np.asarray(_FORMAT, np.int32),
      "num_records": np.asarray(source.num_records, np.int64),
      "epoch": np.asarray(state.epoch, np.int32),
      "index": np.asarray(state.index, np.int32),
  }
  if state.seed is not None:
    out["seed"] = np.asarray(state.seed, np.uint32)
  if source.name is not None:
    out["name"] = np.asarray(source.name)
  if source.split is not None:
    out["split"] = np.asarray(source.split)
  return out


def _int_scalar(d: Mapping[str, Any], key: str, low: int, high: int, hint: str) -> int:
  value = np.asarray(d[key])
  if value.shape != () or not np.issubdtype(value.dtype, np.integer):
    raise ValueError(
        f"Expected checkpoint field {key!r} to be an integer scalar, got dtype"
        f" {value.dtype} and shape {value.shape}; save states with state_to_dict."
    )
  if not low <= int(value) < high:
    raise ValueError(f"Expected checkpoint field {key!r} in [{low}, {high}), got {int(value)}; {hint}.")
  return int(value)


def state_from_dict(
    source: Source,
    d: Mapping[str, Any],
    *,
    shuffle: bool | None = None,
) -> SourceState:
  """Restores a state saved by :func:`state_to_dict`, checking it fits ``source``.

  Args:
    source: the source the restored run will read.
    d: the saved dict (for example ``dict(np.load(path))``).
    shuffle: if given, whether the run being resumed shuffles; a checkpoint of
      the other kind is an error.

  Returns:
    The saved :class:`SourceState`; the next :func:`next_batch` gives the batch
    an uninterrupted run would have given.

  Raises:
    TypeError: if ``d`` is not a mapping.
    ValueError: if fields are missing or unknown, have the wrong dtype or range,
      or the checkpoint was saved for another dataset, split or size.

  Example:
    >>> import numpy as np, tfds_jax
    >>> src = tfds_jax.from_arrays({"x": np.arange(10)})
    >>> state = tfds_jax.init(src, seed=3, shuffle=True)
    >>> restored = tfds_jax.state_from_dict(src, tfds_jax.state_to_dict(src, state))
    >>> int(restored.seed)
    3
  """
  if not isinstance(d, Mapping):
    raise TypeError(
        f"Expected a dict saved by state_to_dict, got {type(d).__name__}; load it"
        " with dict(np.load(path))."
    )
  missing = [k for k in _REQUIRED if k not in d]
  unknown = sorted(set(d) - set(_REQUIRED) - set(_OPTIONAL))
  if missing or unknown:
    raise ValueError(
        f"Expected checkpoint fields {list(_REQUIRED)} (and optionally"
        f" {list(_OPTIONAL)}), got {sorted(d)} (missing {missing}, unknown"
        f" {unknown}); save states with state_to_dict."
    )
  fmt = _int_scalar(d, "format", 0, 2**31, "this checkpoint is not a tfds_jax state")
  if fmt != _FORMAT:
    raise ValueError(
        f"Expected checkpoint format {_FORMAT}, got {fmt}; it was written by"
        " another version of tfds_jax."
    )
  n = source.num_records
  saved_n = _int_scalar(d, "num_records", 1, 2**63, "the checkpoint is damaged")
  if saved_n != n:
    raise ValueError(
        f"Expected a checkpoint for a dataset of {n} records ({_describe(source)}),"
        f" got one saved for {saved_n} records; restore it with the dataset and"
        " split it was saved with."
    )
  for field in ("name", "split"):
    value = getattr(source, field)
    if field in d and value is not None and str(np.asarray(d[field])) != value:
      raise ValueError(
          f"Expected a checkpoint for {field} {value!r}, got one saved for"
          f" {str(np.asarray(d[field]))!r}; restore it with the dataset and split"
          " it was saved with."
      )
  epoch = _int_scalar(d, "epoch", 0, 2**31, "the checkpoint is damaged")
  index = _int_scalar(d, "index", 0, n, "the checkpoint is damaged")
  seed = None
  if "seed" in d:
    seed = jnp.asarray(_int_scalar(d, "seed", 0, 2**32, "the checkpoint is damaged"), jnp.uint32)
  if shuffle is not None and shuffle != (seed is not None):
    saved = "a shuffled" if seed is not None else "an unshuffled"
    raise ValueError(
        f"Expected a checkpoint with shuffle={shuffle}, got {saved} one; resume"
        " with the shuffle setting the run was started with."
    )
  return SourceState(
      epoch=jnp.asarray(epoch, jnp.int32), index=jnp.asarray(index, jnp.int32), seed=seed
  )


def _describe(source: Source) -> str:
  return f"{source.name}[{source.split}]" if source.name else "from_arrays"
