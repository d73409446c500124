"""The only module that talks to TensorFlow Datasets: prepare, read, decode, filter.

TensorFlow is imported lazily, on the first load, and is hidden from every
accelerator before its first use, so it only ever reads on the CPU and never
takes memory from JAX.
"""

from __future__ import annotations

import difflib
import hashlib
import logging
import os
import sys
import time
import warnings
from typing import Any, Iterable, Mapping

import jax
import numpy as np

from tfds_jax import _cache
from tfds_jax._source import Source, from_arrays

log = logging.getLogger("tfds_jax")

_CHUNK_BYTES = 16 << 20  # decoded bytes per read batch
_EMBEDDED = {"digits": "tfds_jax._digits"}


def import_tf():
  """Imports TensorFlow and TFDS for reading, with TF kept off accelerators.

  Returns:
    ``(tf, tfds)``.
  """
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
  os.environ.setdefault("NO_GCE_CHECK", "true")  # offline: skip the GCE metadata probe
  import tensorflow as tf  # pylint: disable=import-outside-toplevel
  for kind in ("GPU", "TPU"):
    try:
      if tf.config.list_physical_devices(kind):
        tf.config.set_visible_devices([], kind)
    except RuntimeError:
      visible = tf.config.get_visible_devices(kind)
      if visible:
        warnings.warn(
            f"TensorFlow was initialized before tfds_jax with {kind}s visible"
            f" ({visible}); it may take accelerator memory from JAX. Import"
            " tfds_jax and load before using TensorFlow, or call"
            f" tf.config.set_visible_devices([], {kind!r}) first.",
            stacklevel=3)
  import tensorflow_datasets as tfds  # pylint: disable=import-outside-toplevel
  return tf, tfds


def base_name(name: str) -> str:
  """``"mnist/config:1.0.0"`` -> ``"mnist"``."""
  return name.split(":")[0].split("/")[0]


def builder(
    name: str,
    *,
    data_dir: str | os.PathLike | None = None,
    try_gcs: bool = False,
):
  """Returns the TFDS builder for ``name``, with a clear error for unknown names.

  Embedded datasets (``digits``) are registered first.

  Raises:
    ValueError: the dataset is unknown; the message lists close names.
  """
  _, tfds = import_tf()
  if base_name(name) in _EMBEDDED:
    __import__(_EMBEDDED[base_name(name)])
  try:
    return tfds.builder(name, data_dir=None if data_dir is None else os.fspath(data_dir), try_gcs=try_gcs)
  except tfds.core.registered.DatasetNotFoundError as e:
    known = sorted(set(tfds.list_builders(with_community_datasets=False)) | set(_EMBEDDED))
    close = difflib.get_close_matches(base_name(name), known, n=5, cutoff=0.6)
    hint = f"did you mean {', '.join(close)}?" if close else "see tfds.list_builders() for the names."
    raise ValueError(
        f"Expected a TFDS dataset name, got {name!r}, which TFDS does not know; {hint}"
    ) from e


def ensure_prepared(
    b,
    *,
    download: bool = True,
    local_files_only: bool = False,
    download_and_prepare_kwargs: Mapping[str, Any] | None = None,
    beam_num_workers: int | None = None,
) -> None:
  """Downloads and prepares the dataset unless its files are already there.

  Raises:
    FileNotFoundError: nothing is prepared and ``local_files_only`` is set or
      ``download`` is off; the message names the directory searched.
  """
  if b.is_prepared():
    return
  if local_files_only or not download:
    why = "local_files_only=True" if local_files_only else "download=False"
    raise FileNotFoundError(
        f"Expected prepared files for {b.name!r} (version {b.version}) in {b.data_dir},"
        f" found none, and {why} forbids preparing them; prepare it once with"
        f" `tfds-jax prepare {b.name} --data-dir {os.path.dirname(os.path.dirname(b.data_dir))}`"
        " (or tfds build), or pass the data_dir that holds it."
    )
  kwargs = dict(download_and_prepare_kwargs or {})
  if beam_num_workers is not None:
    kwargs["download_config"] = _beam_download_config(kwargs.get("download_config"), beam_num_workers)
  print(f"tfds_jax: preparing {b.name} {b.version} in {b.data_dir} ...", file=sys.stderr, flush=True)
  start = time.perf_counter()
  b.download_and_prepare(**kwargs)
  print(f"tfds_jax: prepared {b.name} in {time.perf_counter() - start:.1f}s", file=sys.stderr, flush=True)


def _beam_download_config(config, workers: int):
  """A DownloadConfig whose Beam pipelines run on DirectRunner with ``workers`` processes."""
  _, tfds = import_tf()
  if not isinstance(workers, int) or workers < 1:
    raise ValueError(f"Expected beam_num_workers to be a positive int, got {workers!r}.")
  try:
    from apache_beam.options.pipeline_options import PipelineOptions  # pylint: disable=import-outside-toplevel
  except ImportError as e:
    raise ImportError(
        f"Expected apache-beam to be installed for beam_num_workers={workers}, got"
        " ImportError; install it with `pip install apache-beam`."
    ) from e
  options = PipelineOptions(
      direct_num_workers=workers, direct_running_mode="multi_processing" if workers > 1 else "in_memory")
  config = config or tfds.download.DownloadConfig()
  config.beam_options = options
  return config


def _split_info(b, split: str):
  try:
    return b.info.splits[split]
  except (KeyError, ValueError, AssertionError) as e:
    raise ValueError(
        f"Expected a split of {b.name!r} such as {sorted(b.info.splits.keys())} (slices like"
        f" 'train[:10%]' work too), got {split!r}; pick one of those."
    ) from e


def _check_keys(what: str, keys: Iterable[str] | None, available: list[str], name: str) -> set[str]:
  if keys is None:
    return set()
  if isinstance(keys, str):
    keys = {keys}
  keys = set(keys)
  unknown = sorted(keys - set(available))
  if unknown:
    raise ValueError(
        f"Expected {what} among the features of {name!r}, {available}; got unknown"
        f" {unknown}; use the names listed."
    )
  return keys


def select_keys(
    b,
    *,
    as_supervised: bool,
    include_keys: Iterable[str] | None,
    exclude_keys: Iterable[str] | None,
    decoders: Mapping[str, Any] | None,
) -> tuple[list[str], set[str]]:
  """Returns the features to read and the ones the user asked for by name."""
  features = list(b.info.features.keys())
  asked: set[str] = set()
  if as_supervised:
    supervised = b.info.supervised_keys
    if not supervised or not all(isinstance(k, str) for k in supervised):
      raise ValueError(
          f"Expected {b.name!r} to define flat supervised_keys for as_supervised=True,"
          f" got {supervised!r}; load with as_supervised=False and choose features"
          " with include_keys."
      )
    features = list(dict.fromkeys(supervised))
    asked = set(features)
  include = _check_keys("include_keys", include_keys, features, b.name)
  exclude = _check_keys("exclude_keys", exclude_keys, features, b.name)
  _check_keys("decoders keys", list(decoders or {}), list(b.info.features.keys()), b.name)
  keys = [k for k in features if (not include or k in include) and k not in exclude]
  if not keys:
    raise ValueError(f"Expected at least one feature of {b.name!r} to load, got none after"
                     f" include_keys/exclude_keys; keep at least one of {features}.")
  return keys, asked | include


def _fingerprint(b) -> str:
  """Names, sizes and mtimes of the prepared files: changes when re-prepared."""
  h = hashlib.sha256()
  data_dir = os.fspath(b.data_dir)
  for entry in sorted(os.scandir(data_dir), key=lambda e: e.name):
    if entry.is_file():
      st = entry.stat()
      h.update(f"{entry.name}:{st.st_size}:{st.st_mtime_ns};".encode())
  return h.hexdigest()


def _dataset(b, split: str, keys: list[str], decoders: Mapping[str, Any] | None):
  """The split as a tf.data.Dataset of flat dicts holding only ``keys``."""
  tf, tfds = import_tf()
  partial = tfds.decode.PartialDecoding({k: True for k in keys}, decoders=dict(decoders or {}) or None)
  read_config = tfds.ReadConfig(try_autocache=False, add_tfds_id=False)
  ds = b.as_dataset(split=split, shuffle_files=False, decoders=partial, read_config=read_config)

  def flatten(example):
    flat = {}
    for key in keys:
      value = example[key]
      if isinstance(value, dict):
        for path, leaf in _flatten_dict(value, key):
          flat[path] = leaf
      else:
        flat[key] = value
    return flat

  return ds.map(flatten, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)


def _flatten_dict(d: Mapping[str, Any], prefix: str):
  for k, v in d.items():
    if isinstance(v, Mapping):
      yield from _flatten_dict(v, f"{prefix}/{k}")
    else:
      yield f"{prefix}/{k}", v


def _check_specs(ds, b, split: str, asked: set[str]) -> tuple[Any, dict[str, Any]]:
  """Drops or rejects string features and rejects variable-shape ones."""
  tf, tfds = import_tf()
  spec = ds.element_spec
  strings = [k for k, s in spec.items() if s.dtype == tf.string]
  asked_strings = sorted(k for k in strings if k.split("/")[0] in asked)
  if asked_strings:
    raise ValueError(
        f"Expected numeric features in an eager source, got string feature(s) {asked_strings}"
        f" of {b.name}[{split}], which you asked for by name; JAX arrays cannot hold"
        " strings: leave them out, map them to ids with a decoder, or read them with"
        " tfds directly."
    )
  if strings:
    warnings.warn(f"tfds_jax: dropping string feature(s) {sorted(strings)} of {b.name}[{split}]:"
                  " JAX arrays cannot hold strings (exclude_keys silences this).", stacklevel=3)
    ds = ds.map(lambda x: {k: v for k, v in x.items() if k not in strings})
    spec = ds.element_spec
  ragged = sorted(k for k, s in spec.items()
                  if not isinstance(s, tf.TensorSpec) or s.shape.rank is None or None in s.shape.as_list())
  if ragged:
    seen = {k: set() for k in ragged}
    for example in tfds.as_numpy(ds.take(8)):
      for k in ragged:
        seen[k].add(tuple(np.shape(example[k])))
    shapes = {k: sorted(v)[:5] for k, v in seen.items()}
    raise ValueError(
        f"Expected fixed-shape features in an eager source, got variable-shape"
        f" feature(s) of {b.name}[{split}]: {', '.join(f'{k} (spec {spec[k].shape}, shapes seen {shapes[k]})' for k in ragged)};"
        f" pass a decoder that resizes or pads them (decoders={{...}}), leave them out"
        f" with exclude_keys={ragged}, or stream the dataset instead."
    )
  return ds, {k: (tuple(s.shape.as_list()), s.dtype.as_numpy_dtype) for k, s in spec.items()}


def _read_all(ds, n: int, specs: Mapping[str, Any], label: str) -> dict[str, np.ndarray]:
  """Reads ``n`` records in bulk batches into aligned numpy buffers."""
  _, tfds = import_tf()
  record_bytes = sum(int(np.prod(shape, dtype=np.int64)) * np.dtype(dt).itemsize for shape, dt in specs.values())
  chunk = int(max(1, min(n, _CHUNK_BYTES // max(record_bytes, 1))))
  out = {k: _cache.aligned_empty((n, *shape), dt) for k, (shape, dt) in specs.items()}
  from tqdm.auto import tqdm  # pylint: disable=import-outside-toplevel
  pos = 0
  with tqdm(total=n, desc=f"loading {label}", unit=" records", unit_scale=True, delay=1.0,
            file=sys.stderr, leave=False) as bar:
    for batch in tfds.as_numpy(ds.batch(chunk).prefetch(2)):
      m = len(next(iter(batch.values())))
      if pos + m > n:
        raise RuntimeError(f"Expected {n} records in {label} (from its dataset info), got more;"
                           " the prepared files disagree with their metadata: prepare it again.")
      for k, v in batch.items():
        out[k][pos:pos + m] = v
      pos += m
      bar.update(m)
  if pos != n:
    raise RuntimeError(f"Expected {n} records in {label} (from its dataset info), got {pos};"
                       " the prepared files disagree with their metadata: prepare it again.")
  return out


def load(
    name: str,
    split: str,
    *,
    data_dir: str | os.PathLike | None = None,
    as_supervised: bool = False,
    include_keys: Iterable[str] | None = None,
    exclude_keys: Iterable[str] | None = None,
    decoders: Mapping[str, Any] | None = None,
    download: bool = True,
    local_files_only: bool = False,
    try_gcs: bool = False,
    download_and_prepare_kwargs: Mapping[str, Any] | None = None,
    beam_num_workers: int | None = None,
    cache: bool = True,
    device: jax.Device | jax.sharding.Sharding | None = None,
) -> Source:
  """Loads a whole TFDS split into JAX arrays, once; afterwards no TensorFlow.

  Records are decoded by TFDS in bulk batches (features left out are never
  parsed), written into one buffer per feature, cached decoded on disk, and
  handed to JAX (without a copy on the CPU). A later load of the same dataset,
  version, config, split, keys and mode reads the cache instead.

  Args:
    name: TFDS name, optionally with config and version (``"mnist"``,
      ``"cifar10:3.0.2"``, ``"digits"`` for the embedded dataset).
    split: split string, slices included (``"train"``, ``"train[:10%]"``).
    data_dir: where TFDS keeps prepared datasets (default: TFDS's).
    as_supervised: load only the dataset's ``supervised_keys``, as a dict keyed
      by their names (for example ``{"image", "label"}``).
    include_keys: load only these top-level features.
    exclude_keys: load all top-level features but these.
    decoders: TFDS decoders per feature (for example one that resizes images);
      loads with decoders are not cached, since decoders cannot be fingerprinted.
    download: prepare the dataset if it is not prepared yet.
    local_files_only: never download or prepare; fail if nothing is prepared.
    try_gcs: let TFDS read prepared files from its public GCS bucket.
    download_and_prepare_kwargs: passed to ``builder.download_and_prepare``.
    beam_num_workers: prepare Beam-based datasets with Beam's DirectRunner on
      this many processes (needs ``apache-beam``).
    cache: read and write the decoded-array cache (``$TFDS_JAX_CACHE_DIR``,
      default ``~/.cache/tfds_jax``).
    device: where to put the arrays (default: JAX's default device).

  Returns:
    A :class:`Source` with ``name``, ``split`` and ``info`` set; nested features
    are flattened to ``"parent/child"`` keys.

  Raises:
    ValueError: unknown dataset (close names listed), unknown split (splits
      listed), both include and exclude keys, unknown keys (the dataset's keys
      listed), string features asked for by name, variable-shape features.
    FileNotFoundError: nothing prepared while ``local_files_only`` or
      ``download=False``.

  Example:
    >>> import tfds_jax
    >>> src = tfds_jax.load("digits", "train")  # doctest: +SKIP
    >>> src.num_records, tfds_jax.element_spec(src)["image"].shape  # doctest: +SKIP
    (1437, (8, 8, 1))
  """
  if include_keys is not None and exclude_keys is not None:
    raise ValueError(
        f"Expected at most one of include_keys and exclude_keys, got both"
        f" ({sorted(include_keys)} and {sorted(exclude_keys)}); keep one."
    )
  b = builder(name, data_dir=data_dir, try_gcs=try_gcs)
  ensure_prepared(b, download=download, local_files_only=local_files_only,
                  download_and_prepare_kwargs=download_and_prepare_kwargs,
                  beam_num_workers=beam_num_workers)
  split_info = _split_info(b, split)
  keys, asked = select_keys(b, as_supervised=as_supervised, include_keys=include_keys,
                            exclude_keys=exclude_keys, decoders=decoders)
  label = f"{b.name}[{split}]"
  config = b.builder_config.name if b.builder_config else None
  key = {"name": b.name, "config": config, "version": str(b.version), "split": split,
         "keys": keys, "as_supervised": bool(as_supervised), "data_dir": os.fspath(b.data_dir),
         "format": _cache.FORMAT}
  use_cache = cache and not decoders
  if cache and decoders:
    log.info("tfds_jax: not caching %s: custom decoders cannot be fingerprinted.", label)
  arrays = None
  if use_cache:
    fingerprint = _fingerprint(b)
    arrays = _cache.read(key, fingerprint)
    if arrays is not None:
      log.info("tfds_jax: loaded %s from cache %s", label, _cache.entry_dir(key))
  if arrays is None:
    ds, specs = _check_specs(_dataset(b, split, keys, decoders), b, split, asked)
    start = time.perf_counter()
    arrays = _read_all(ds, int(split_info.num_examples), specs, label)
    log.info("tfds_jax: decoded %s in %.2fs", label, time.perf_counter() - start)
    if use_cache:
      _cache.write(key, fingerprint, arrays)
  return from_arrays(arrays, name=b.name if config is None else f"{b.name}/{config}",
                     split=split, info=b.info, device=device)
