"""The only module that talks to TensorFlow Datasets: prepare, read, decode, filter.

TensorFlow is imported lazily, on the first load, and is hidden from every
accelerator before its first use, so it only ever reads on the CPU and never
takes memory from JAX.
"""

from __future__ import annotations

import contextlib
import dataclasses
import difflib
import functools
import importlib
import importlib.util
import json
import logging
import os
import re
import socket
import sys
import tempfile
import threading
import time
import urllib.parse
import urllib.request
import warnings
from pathlib import Path
from typing import Any, Iterable, Mapping

import jax
import numpy as np

from tfds_jax import _array_record
from tfds_jax import _cache
from tfds_jax._source import Source, from_arrays

log = logging.getLogger("tfds_jax")

_CHUNK_BYTES = 4 << 20  # decoded bytes per read batch
_EMBEDDED = {"digits": "tfds_jax._digits"}


@dataclasses.dataclass(frozen=True)
class DatasetInfoRef:
  """Static, hashable stand-in for a ``DatasetInfo``: the prepared dataset's directory.

  Sources keep this as metadata so that reloading the same dataset gives an
  equal pytree (no retrace) and a cached load needs no TensorFlow; call
  :func:`info` for the ``DatasetInfo`` itself.
  """

  data_dir: str  # directory holding dataset_info.json


_INFOS: dict[str, Any] = {}

# Messages TFDS logs (through absl) on tfds_jax's own calls that tell the user nothing
# they can act on: deprecations inside TFDS, an empty version folder before the first
# preparation, a conversion count TFDS logs unformatted.
_NOISE = ("is deprecated", "Variant folder", "Amount of converted shards")
_quiet_lock = threading.Lock()
_quiet_depth = 0


class _DropNoise(logging.Filter):
  def filter(self, record: logging.LogRecord) -> bool:
    return record.levelno >= logging.ERROR or not any(n in str(record.msg) for n in _NOISE)


_DROP_NOISE = _DropNoise()


@contextlib.contextmanager
def _quiet_tfds():
  global _quiet_depth  # pylint: disable=global-statement
  with _quiet_lock:
    if _quiet_depth == 0:
      logging.getLogger("absl").addFilter(_DROP_NOISE)
    _quiet_depth += 1
  try:
    yield
  finally:
    with _quiet_lock:
      _quiet_depth -= 1
      if _quiet_depth == 0:
        logging.getLogger("absl").removeFilter(_DROP_NOISE)


def quiet(fn):
  """Decorates a function that calls TFDS: while it runs, TFDS's known noise is dropped.

  Only the messages in ``_NOISE`` (below ERROR), only on the ``absl`` logger, and
  only while a decorated call is running (a filter on that logger, removed when
  the last such call returns); nothing else in the logging configuration is
  touched.
  """

  @functools.wraps(fn)
  def wrapper(*args, **kwargs):
    with _quiet_tfds():
      return fn(*args, **kwargs)

  return wrapper


@quiet
def info(source: Source) -> Any:
  """Returns the TFDS ``DatasetInfo`` of a loaded source.

  It holds the description, features (with class names), splits and their
  sizes, citation and supervised keys. For a source read from the cache, the
  first call reads ``dataset_info.json`` with TFDS (without TensorFlow).

  Args:
    source: a :class:`Source` made by :func:`load` (or given ``info=``).

  Returns:
    The ``tfds.core.DatasetInfo`` (or whatever ``info=`` was given).

  Raises:
    ValueError: if the source carries none (it was made from arrays).

  Example:
    >>> import numpy as np, tfds_jax
    >>> tfds_jax.info(tfds_jax.from_arrays({"x": np.arange(3)}, info="my info"))
    'my info'
  """
  ref = source.info
  if ref is None:
    raise ValueError(
        "Expected a source made by tfds_jax.load (with TFDS dataset info), got one"
        " without info; pass info= to from_arrays, or load the dataset with load."
    )
  if not isinstance(ref, DatasetInfoRef):
    return ref
  if ref.data_dir not in _INFOS:
    _INFOS[ref.data_dir] = import_tfds().builder_from_directory(ref.data_dir).info
  return _INFOS[ref.data_dir]


def import_tfds():
  """Imports TFDS without TensorFlow (enough for builders, dataset info and features).

  Returns:
    The ``tensorflow_datasets`` module.
  """
  import tensorflow_datasets as tfds  # pylint: disable=import-outside-toplevel
  return tfds


_TF_MISSING = (
    "Expected TensorFlow to read TFDS files, got none installed; install one:"
    " `pip install 'tfds_jax[tf]'` (tensorflow-cpu, or tensorflow where there is no"
    " tensorflow-cpu), or any flavour you prefer (tensorflow, tensorflow-cpu, tf-nightly)."
    " Sources already in the decoded cache load without it.")


def import_tf():
  """Imports TensorFlow and TFDS for reading, with TF kept off accelerators.

  The first import does not print TensorFlow's start-up banner (which TF
  prints once per shared library: twice), and a missing or broken TensorFlow
  is an ImportError saying what to install.

  Returns:
    ``(tf, tfds)``.

  Raises:
    ImportError: TensorFlow is not installed, or does not import.
  """
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
  os.environ.setdefault("NO_GCE_CHECK", "true")  # offline: skip the GCE metadata probe
  if sys.modules.get("tensorflow") is None:
    if not _tf_installed():
      raise ImportError(_TF_MISSING)
    try:
      with _without_banner():
        import tensorflow as tf  # pylint: disable=import-outside-toplevel
        _hide_accelerators(tf)  # the first listing of devices logs too ("failed call to cuInit")
    except ImportError as e:
      raise ImportError(
          f"Expected a working TensorFlow, got an ImportError importing it ({e}); two TensorFlow"
          " flavours installed into one environment (tensorflow and tensorflow-cpu share one"
          " folder) break each other: uninstall both and install one (`pip install"
          " 'tfds_jax[tf]'` installs tensorflow-cpu).") from e
  import tensorflow as tf  # pylint: disable=import-outside-toplevel
  _hide_accelerators(tf)
  return tf, import_tfds()


def _hide_accelerators(tf) -> None:
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
            stacklevel=4)


# TensorFlow's start-up lines: the note that absl logs to stderr, the oneDNN notice (once
# per shared library), and CUDA's "no GPU here" from a GPU build (TF never uses one here).
_BANNER = re.compile(r"WARNING: All log messages before absl::InitializeLog\(\) is called"
                     r"|\] oneDNN custom operations are on"
                     r"|\] failed call to cuInit")


@contextlib.contextmanager
def _without_banner():
  """Captures what the C++ side writes to stderr (file descriptor 2) meanwhile, and
  writes it back without TensorFlow's start-up banner. Other threads' stderr output in
  the meantime is delayed, never lost."""
  try:
    sys.stderr.flush()
    saved = os.dup(2)
  except (OSError, ValueError, AttributeError):  # no usable descriptor 2: leave it alone
    yield
    return
  with tempfile.TemporaryFile() as captured:
    os.dup2(captured.fileno(), 2)
    try:
      yield
    finally:
      try:
        sys.stderr.flush()
      except (OSError, ValueError):
        pass
      os.dup2(saved, 2)
      os.close(saved)
      captured.seek(0)
      kept = [line for line in captured.read().decode(errors="replace").splitlines(keepends=True)
              if not _BANNER.search(line)]
      if kept:
        os.write(2, "".join(kept).encode())


def base_name(name: str) -> str:
  """``"mnist/config:1.0.0"`` -> ``"mnist"``."""
  return name.split(":")[0].split("/")[0]


@quiet
def builder(
    name: str,
    *,
    data_dir: str | os.PathLike | None = None,
    try_gcs: bool = False,
):
  """Returns the TFDS builder for ``name``, with a clear error for unknown names.

  Embedded datasets (``digits``) are registered first. Needs no TensorFlow
  (TFDS reads builders, dataset info and features without it); what reads or
  prepares the files imports it with :func:`import_tf`.

  Raises:
    ValueError: the dataset is unknown; the message lists close names.
  """
  tfds = import_tfds()
  if base_name(name) in _EMBEDDED:
    importlib.import_module(_EMBEDDED[base_name(name)])
  try:
    return tfds.builder(name, data_dir=None if data_dir is None else os.fspath(data_dir), try_gcs=try_gcs)
  except tfds.core.registered.DatasetNotFoundError as e:
    known = sorted(set(tfds.list_builders(with_community_datasets=False)) | set(_EMBEDDED))
    close = difflib.get_close_matches(base_name(name), known, n=5, cutoff=0.6)
    hint = f"did you mean {', '.join(close)}?" if close else "see tfds.list_builders() for the names."
    raise ValueError(
        f"Expected a TFDS dataset name, got {name!r}, which TFDS does not know; {hint}"
    ) from e
  except Exception as e:  # pylint: disable=broad-except
    if not _tf_installed():  # older TFDS (< 4.9.10) cannot make some builders without TF
      raise ImportError(_TF_MISSING) from e
    raise


def _tf_installed() -> bool:
  try:
    return sys.modules.get("tensorflow") is not None or importlib.util.find_spec("tensorflow") is not None
  except (ImportError, ValueError):
    return False


def ensure_prepared(
    b,
    *,
    download: bool = True,
    local_files_only: bool = False,
    download_and_prepare_kwargs: Mapping[str, Any] | None = None,
    beam_num_workers: int | None = None,
) -> None:
  """Downloads and prepares the dataset unless its files are already there.

  Logs one line before and one after (logger ``tfds_jax``), in place of TFDS's
  own prints; TFDS's progress bars stay (but for the embedded datasets, which
  take well under a second). A download whose host cannot be reached fails at
  once (TFDS would retry every file for about four minutes).

  Raises:
    FileNotFoundError: nothing is prepared and ``local_files_only`` is set or
      ``download`` is off; the message names the directory searched.
    ConnectionError: a file must be downloaded and its host is unreachable.
  """
  if b.is_prepared():
    return
  if local_files_only or not download:
    why = "local_files_only=True" if local_files_only else "download=False"
    raise FileNotFoundError(
        f"Expected prepared files for {b.name!r} (version {b.version}) in {b.data_dir},"
        f" found none, and {why} forbids preparing them; prepare it once with"
        f" `tfds-jax prepare {full_name(b)} --data-dir {Path(b.data_dir).parents[1 + full_name(b).count('/')]}`"
        " (or tfds build), or pass the data_dir that holds it."
    )
  import_tf()  # preparing runs TensorFlow: hide the accelerators from it first
  kwargs = dict(download_and_prepare_kwargs or {})
  if beam_num_workers is not None:
    kwargs["download_config"] = _beam_download_config(kwargs.get("download_config"), beam_num_workers)
  _fail_fast_offline(b)
  for method in ("_log_download_bytes", "_log_download_done"):  # TFDS's prints of the same events
    if hasattr(b, method):
      setattr(b, method, lambda: None)
  log.info("preparing %s %s in %s ...", full_name(b), b.version, b.data_dir)
  start = time.perf_counter()
  with _tfds_bars(base_name(b.name) not in _EMBEDDED):  # embedded ones take well under a second
    b.download_and_prepare(**kwargs)
  log.info("prepared %s %s in %.1fs", full_name(b), b.version, time.perf_counter() - start)


@contextlib.contextmanager
def _tfds_bars(show: bool):
  """TFDS's progress bars on (as they were) or off meanwhile."""
  from tensorflow_datasets.core.utils import tqdm_utils  # pylint: disable=import-outside-toplevel
  was = getattr(tqdm_utils, "_active", True)
  tqdm_utils.display_progress_bar(show and was)
  try:
    yield
  finally:
    tqdm_utils.display_progress_bar(was)


def _fail_fast_offline(b) -> None:
  """Makes ``b``'s downloads check their host first: offline, TFDS would retry every
  file for about four minutes (10 retries with exponential backoff) before failing.

  Only downloads TFDS actually starts are checked (files it already has, mocked
  preparation and builders that download nothing are untouched). Unknown TFDS
  internals leave TFDS's behaviour as it is.
  """
  make = getattr(b, "_make_download_manager", None)
  if make is None:
    return

  def make_checked(*args, **kwargs):
    manager = make(*args, **kwargs)
    try:
      manager._DownloadManager__downloader = _CheckedDownloader(manager._downloader, b.name)  # pylint: disable=protected-access
    except AttributeError:
      pass
    return manager

  b._make_download_manager = make_checked  # pylint: disable=protected-access


class _CheckedDownloader:
  """TFDS's downloader, but a URL whose host (or proxy) cannot be reached fails at once."""

  def __init__(self, downloader, name: str):
    self._downloader, self._name, self._reached = downloader, name, set()

  def __getattr__(self, attr):
    return getattr(self._downloader, attr)

  def download(self, url, destination_path, *args, **kwargs):
    parts = urllib.parse.urlsplit(str(url))
    if parts.scheme in ("http", "https"):
      proxy = None if urllib.request.proxy_bypass(parts.hostname or "") else \
          urllib.request.getproxies().get(parts.scheme)
      where = urllib.parse.urlsplit(proxy) if proxy else parts
      host, port = where.hostname, where.port or (443 if where.scheme == "https" else 80)
      if (host, port) not in self._reached:
        try:
          socket.create_connection((host, port), timeout=10).close()
        except OSError as e:
          with contextlib.suppress(OSError):
            os.rmdir(destination_path)  # the empty folder TFDS made for this download
          raise ConnectionError(
              f"Expected network access to download {self._name!r} ({url}), got none: connecting to"
              f" {host}:{port}{' (the proxy)' if proxy else ''} failed ({e}); prepare it where there"
              f" is network (`tfds-jax prepare {self._name} --data-dir DIR`), copy DIR here and load"
              " with data_dir=DIR (local_files_only=True never tries to download).") from None
        self._reached.add((host, port))
    return self._downloader.download(url, destination_path, *args, **kwargs)


@quiet
def prepare(
    name: str,
    *,
    data_dir: str | os.PathLike | None = None,
    file_format: str | None = None,
    beam_num_workers: int | None = None,
    download_and_prepare_kwargs: Mapping[str, Any] | None = None,
) -> str:
  """Downloads and prepares a TFDS dataset (once), showing progress.

  A dataset already prepared in another file format is converted: its records
  are written again in ``file_format`` next to the old files (kept, and listed
  as an alternative format), and the new format becomes the one every reader
  uses; loads decoded from the old files are rebuilt from the new ones.

  Args:
    name: TFDS name, optionally with config and version.
    data_dir: where to prepare it (default: TFDS's).
    file_format: ``"tfrecord"`` or ``"array_record"`` (random access).
    beam_num_workers: Beam DirectRunner processes for Beam-based datasets.
    download_and_prepare_kwargs: more arguments for ``download_and_prepare``.

  Returns:
    The directory of the prepared files.

  Raises:
    ValueError: unknown dataset or file format.

  Example:
    >>> import tfds_jax
    >>> tfds_jax.prepare("digits")  # doctest: +SKIP
    '/root/tensorflow_datasets/digits/1.0.0'
  """
  kwargs = dict(download_and_prepare_kwargs or {})
  if file_format is not None:
    kwargs["file_format"] = file_format
  b = builder(name, data_dir=data_dir)
  if b.is_prepared() and kwargs.get("file_format") not in (None, _file_format(b)):
    convert(b, kwargs["file_format"])
  else:
    ensure_prepared(b, download_and_prepare_kwargs=kwargs, beam_num_workers=beam_num_workers)
  return os.fspath(b.data_dir)


def convert(b, to: str) -> None:
  """Writes every split of prepared ``b`` again in file format ``to`` and makes it the default.

  Each shard is read in order and written under the same name with the new
  suffix (record order, split sizes and shard lengths stay the same); then
  ``dataset_info.json`` names ``to`` as the file format and the old one as an
  alternative (TFDS still reads it with ``ReadConfig(file_format=...)``).

  Args:
    b: a builder whose dataset is prepared.
    to: ``"array_record"`` or ``"tfrecord"``.

  Raises:
    ValueError: ``to`` is not a format TFDS writes, or a shard holds another
      number of records than the dataset info says.
  """
  import_tf()
  from tensorflow_datasets.core import file_adapters  # pylint: disable=import-outside-toplevel
  old = _file_format(b)
  try:
    target = file_adapters.FileFormat.from_value(to)
    reader, writer = (file_adapters.ADAPTER_FOR_FORMAT[file_adapters.FileFormat.from_value(old)],
                      file_adapters.ADAPTER_FOR_FORMAT[target])
  except (KeyError, ValueError) as e:
    raise ValueError(f"Expected file_format 'array_record' or 'tfrecord', got {to!r}; pick one"
                     " of those.") from e
  from tqdm.auto import tqdm  # pylint: disable=import-outside-toplevel
  splits = list(b.info.splits.values())
  if not splits or any(split.filename_template is None for split in splits):
    raise ValueError(
        f"Expected the dataset info of {full_name(b)} in {b.data_dir} to name its files, got"
        " splits without file names (prepared by an old TFDS); prepare it again in a new"
        f" directory: `tfds-jax prepare {full_name(b)} --file-format {to} --data-dir NEW_DIR`.")
  log.info("converting %s %s in %s from %s to %s ...", full_name(b), b.version, b.data_dir, old, to)
  start = time.perf_counter()
  with tqdm(total=sum(s.num_examples for s in splits), desc=f"converting {b.name}", unit=" records",
            unit_scale=True, delay=1.0, file=sys.stderr, leave=False) as bar:
    for split in splits:
      shards = len(split.shard_lengths)
      for i, length in enumerate(split.shard_lengths):
        src = split.filename_template.sharded_filepath(shard_index=i, num_shards=shards)
        dst = split.filename_template.replace(filetype_suffix=target.file_suffix).sharded_filepath(
            shard_index=i, num_shards=shards)
        tmp = dst.parent / f".{dst.name}.tfds_jax-tmp-{os.getpid()}"
        count = 0

        def records(src=src):
          nonlocal count
          for record in reader.make_tf_data(src):
            count += 1
            bar.update(1)
            yield count, record.numpy()

        try:
          writer.write_examples(tmp, records())
          if count != length:
            raise ValueError(f"Expected {length} records in {src} (from its dataset info), got {count};"
                             " the prepared files are damaged: prepare the dataset again.")
          tmp.rename(dst)
        finally:
          tmp.unlink(missing_ok=True)
  path = Path(b.data_dir) / "dataset_info.json"
  meta = json.loads(path.read_text())
  meta["fileFormat"] = to
  meta["alternativeFileFormats"] = [old] + [f for f in meta.get("alternativeFileFormats", []) if f not in (to, old)]
  tmp = path.with_name(f".dataset_info.json.tfds_jax-tmp-{os.getpid()}")
  tmp.write_text(json.dumps(meta, indent=4))
  os.replace(tmp, path)
  _INFOS.pop(os.fspath(b.data_dir), None)
  log.info("converted %s %s to %s in %.1fs (the %s files stay, as an alternative format)",
           full_name(b), b.version, to, time.perf_counter() - start, old)


@quiet
def describe(name: str, *, data_dir: str | os.PathLike | None = None) -> str:
  """Returns a readable summary of a dataset: features, splits, decoded sizes.

  Decoded sizes are what :func:`load` would hold: fixed-shape numeric features
  in JAX's dtypes (strings are dropped).

  Args:
    name: TFDS name.
    data_dir: TFDS data directory.

  Returns:
    Multi-line text.
  """
  b = builder(name, data_dir=data_dir)
  info = b.info
  lines = [f"{b.name} {b.version}: {'prepared' if b.is_prepared() else 'not prepared'} in {b.data_dir}"]
  if info.description:
    lines.append("  " + info.description.strip().splitlines()[0][:200])
  lines.append("features:")
  record_bytes, fixed = 0, True
  for key, feature in info.features.items():
    tensors = feature.get_tensor_info()
    leaves = dict(flatten_dict(tensors, key)) if isinstance(tensors, Mapping) else {key: tensors}
    for path, t in leaves.items():
      shape = tuple(t.shape)
      numeric = np.dtype(t.np_dtype).kind not in "OSU"
      if numeric and None not in shape:
        record_bytes += int(np.prod(shape, dtype=np.int64)) * np.dtype(jax.dtypes.canonicalize_dtype(t.np_dtype)).itemsize
      else:
        fixed = fixed and not numeric  # strings are dropped by load; variable shapes block it
      kind = type(feature).__name__
      extra = f", {feature.num_classes} classes" if hasattr(feature, "num_classes") else ""
      note = "" if numeric and None not in shape else ("  (string: dropped by load)" if not numeric else "  (variable shape)")
      lines.append(f"  {path}: {kind} {np.dtype(t.np_dtype).name}{list(shape)}{extra}{note}")
  if info.supervised_keys:
    lines.append(f"supervised keys: {info.supervised_keys}")
  budget, where = memory_budget()
  stream = ("random access: ArrayRecord files" if file_format(b) == "array_record"
            else "tf.data: TFRecord files")
  lines.append(f"splits (memory budget for eager loading: {human(budget)}, {where}; files: {file_format(b)}):")
  for split, split_info in sorted(info.splits.items()):
    nbytes = record_bytes * split_info.num_examples
    if not fixed:
      size = f", variable-shape: from_tfds would stream it ({stream}; batch it with preprocess=)"
    elif nbytes <= budget:
      size = f", {human(nbytes)} decoded: fits in memory, from_tfds would load it eagerly"
    else:
      size = f", {human(nbytes)} decoded: does not fit the budget, from_tfds would stream it ({stream})"
    lines.append(f"  {split}: {split_info.num_examples:,} records{size}")
  return "\n".join(lines)


def memory_budget() -> tuple[int, str]:
  """Bytes an eager source may take by default, and where that figure comes from.

  10% of the default accelerator's memory; on a CPU-only machine, 25% of the
  host memory available now (``MemAvailable`` in ``/proc/meminfo``).

  Returns:
    ``(bytes, description)``.
  """
  total, _, where = _memory()
  fraction = 0.25 if where == "host" else 0.10
  return int(total * fraction), f"{fraction:.0%} of {'available host' if where == 'host' else where} memory"


def memory_free() -> tuple[int, str]:
  """Bytes free now on the default device (accelerator, or host RAM), and its name."""
  _, free, where = _memory()
  return free, f"free {'host' if where == 'host' else where} memory"


def _memory() -> tuple[int, int, str]:
  device = jax.local_devices()[0]
  stats = device.memory_stats() if device.platform != "cpu" else None
  if stats and stats.get("bytes_limit"):
    return int(stats["bytes_limit"]), int(stats["bytes_limit"] - stats.get("bytes_in_use", 0)), device.device_kind
  try:
    with open("/proc/meminfo") as f:
      available = next(int(line.split()[1]) * 1024 for line in f if line.startswith("MemAvailable"))
  except (OSError, StopIteration):
    available = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES")
  return available, available, "host"


def human(nbytes: float) -> str:
  for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
    if nbytes < 1024 or unit == "TiB":
      return f"{nbytes:.1f} {unit}"
    nbytes /= 1024
  return f"{nbytes:.1f} TiB"


def _beam_download_config(config, workers: int):
  """A DownloadConfig whose Beam pipelines run on DirectRunner with ``workers`` processes."""
  _, tfds = import_tf()
  if isinstance(workers, bool) or not isinstance(workers, (int, np.integer)) or workers < 1:
    raise ValueError(f"Expected beam_num_workers to be a positive int, got {workers!r};"
                     " pass the number of Beam DirectRunner processes, 1 or more.")
  workers = int(workers)
  try:
    from apache_beam.options.pipeline_options import PipelineOptions  # pylint: disable=import-outside-toplevel
  except ImportError as e:
    raise ImportError(
        f"Expected apache-beam to be installed for beam_num_workers={workers}, got"
        " ImportError; install it with `pip install 'tfds_jax[beam]'` (in a tfds_jax checkout:"
        " `uv run --extra beam`)."
    ) from e
  options = PipelineOptions(
      direct_num_workers=workers, direct_running_mode="multi_processing" if workers > 1 else "in_memory")
  config = config or tfds.download.DownloadConfig()
  config.beam_options = options
  return config


def _split_size(b, split: str) -> int | None:
  """Records in ``split`` from the dataset info; None if the info lists no splits
  (as under ``tfds.testing.mock_data``), in which case the reader counts them."""
  if not b.info.splits:
    return None
  try:
    return int(b.info.splits[split].num_examples)
  except (KeyError, ValueError, AssertionError) as e:
    raise ValueError(
        f"Expected a split of {b.name!r} such as {sorted(b.info.splits.keys())} (slices like"
        f" 'train[:10%]' work too), got {split!r}; pick one of those."
    ) from e


def _check_keys(what: str, keys: Iterable[str] | None, available: list[str], name: str) -> set[str]:
  if keys is None:
    return set()
  keys = _as_set(keys)
  unknown = sorted(keys - set(available))
  if unknown:
    raise ValueError(
        f"Expected {what} among the features of {name!r}, {sorted(available)}; got unknown"
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


def _dataset(b, split: str, keys: list[str], decoders: Mapping[str, Any] | None,
             batch_size: int | None = None):
  """The split as a tf.data.Dataset of dicts holding only ``keys``, decoded.

  With ``batch_size``, TFDS batches it (markedly faster than ``.batch()`` after
  ``as_dataset``, see benchmarks/load.py).
  """
  _, tfds = import_tf()
  decoders = {k: v for k, v in (decoders or {}).items() if k in keys}
  partial = tfds.decode.PartialDecoding({k: True for k in keys}, decoders=decoders or None)
  read_config = tfds.ReadConfig(try_autocache=False, add_tfds_id=False)
  return b.as_dataset(split=split, shuffle_files=False, decoders=partial, read_config=read_config,
                      batch_size=batch_size)


def flatten_dict(d: Mapping[str, Any], prefix: str = ""):
  """Yields ("parent/child", leaf) pairs of a nested dict."""
  for k, v in d.items():
    path = f"{prefix}/{k}" if prefix else k
    if isinstance(v, Mapping):
      yield from flatten_dict(v, path)
    else:
      yield path, v


def strings_to_drop(spec: Mapping[str, Any], asked: set[str], label: str) -> list[str]:
  """The flat string features of ``spec`` (name -> TensorSpec), to be dropped.

  Warns about them; raises when one was asked for by name (include_keys or
  as_supervised), since JAX arrays cannot hold strings.
  """
  tf, _ = import_tf()
  strings = sorted(k for k, s in spec.items() if s.dtype == tf.string)
  asked_strings = [k for k in strings if k.split("/")[0] in asked]
  if asked_strings:
    raise ValueError(
        f"Expected numeric features, got string feature(s) {asked_strings} of {label},"
        " which you asked for by name; JAX arrays cannot hold strings: leave them out,"
        " map them to ids with a decoder, or read them with tfds directly."
    )
  if strings:
    warnings.warn(f"dropping string feature(s) {strings} of {label}:"
                  " JAX arrays cannot hold strings (exclude_keys silences this).", stacklevel=4)
  return strings


def check_fixed_shapes(spec: Mapping[str, Any], label: str, what: str, peek, fix: str) -> None:
  """Raises for features of ``spec`` whose shape is not fixed, naming shapes seen.

  Args:
    spec: flat name -> TensorSpec (or RaggedTensorSpec).
    label: ``name[split]`` for messages.
    what: the kind of source, for messages ("an eager source").
    peek: a callable returning a few decoded flat records (numpy) to show shapes.
    fix: what the user can pass to make them fixed.
  """
  tf, _ = import_tf()
  ragged = sorted(k for k, s in spec.items()
                  if not isinstance(s, tf.TensorSpec) or s.shape.rank is None or None in s.shape.as_list())
  if not ragged:
    return
  seen = {k: set() for k in ragged}
  for flat in peek():
    for k in ragged:
      seen[k].add(tuple(flat[k].shape if hasattr(flat[k], "shape") else np.shape(flat[k])))
  shapes = {k: sorted(v)[:5] for k, v in seen.items()}
  raise ValueError(
      f"Expected fixed-shape features in {what}, got variable-shape feature(s) of {label}:"
      f" {', '.join(f'{k} (spec {tuple(spec[k].shape)}, shapes seen {shapes[k]})' for k in ragged)};"
      f" {fix}, or leave them out with exclude_keys={sorted({k.split('/')[0] for k in ragged})}."
  )


_EAGER_FIX = "pass a decoder that resizes or pads them (decoders={...}), stream the dataset instead"


def file_format(b) -> str:
  """``"tfrecord"`` or ``"array_record"``: how ``b``'s dataset was prepared."""
  return str(getattr(b.info.file_format, "value", b.info.file_format) or "tfrecord")


_file_format = file_format  # for functions whose file_format parameter shadows it


def _check_specs(b, split: str, keys: list[str], decoders, asked: set[str]):
  """Returns the keys to read and their flat specs, without strings or variable shapes.

  String features are left out of decoding (with a warning), or rejected when
  asked for by name; variable-shape features are rejected.
  """
  tf, tfds = import_tf()
  label = f"{b.name}[{split}]"
  ds = _dataset(b, split, keys, decoders)
  spec = dict(flatten_dict(ds.element_spec))
  strings = strings_to_drop(spec, asked, label)
  if strings:
    string_tops = {k.split("/")[0] for k in strings}
    if any(k.split("/")[0] in string_tops for k in spec if k not in strings):
      raise ValueError(
          f"Expected nested features {sorted(string_tops)} of {label} to be all"
          f" numeric or all strings, got a mix; exclude them with exclude_keys={sorted(string_tops)}.")
    keys = [k for k in keys if k not in string_tops]
    if not keys:
      raise ValueError(f"Expected a numeric feature in {label}, got only strings {strings};"
                       " map them to ids with a decoder.")
    ds = _dataset(b, split, keys, decoders)
    spec = dict(flatten_dict(ds.element_spec))
  check_fixed_shapes(
      spec, label, "an eager source",
      lambda: [dict(flatten_dict(e)) for e in tfds.as_numpy(ds.take(8))],
      _EAGER_FIX)
  return keys, {k: (tuple(s.shape.as_list()), s.dtype.as_numpy_dtype) for k, s in spec.items()}


def tf_error_text(error) -> str:
  """The line of a TensorFlow error that says what went wrong (not where)."""
  lines = [line.strip() for line in error.message.splitlines() if line.strip()]
  noise = ("Graph execution error", "Detected at node", "File ", "[[")
  useful = [line for line in lines if not line.startswith(noise)]
  return (useful or lines or ["(no message)"])[0][:500]


def to_jax_dtype(key: str, value: np.ndarray, target: np.dtype, label: str) -> np.ndarray:
  """``value`` in ``target`` dtype; integers that do not fit are an error, never wrapped."""
  if value.dtype == target:
    return value
  if np.issubdtype(value.dtype, np.integer) and value.size:
    bounds = np.iinfo(target)
    if value.min() < bounds.min or value.max() > bounds.max:
      raise ValueError(
          f"Expected feature {key!r} of {label} to fit {target} (JAX's integer type"
          f" with x64 disabled), got values in [{value.min()}, {value.max()}]; enable"
          " jax_enable_x64 before loading, or exclude the feature.")
  return value.astype(target)


def _read_all(b, split: str, keys: list[str], decoders, n: int | None, specs: Mapping[str, Any],
              label: str) -> dict[str, np.ndarray]:
  """Reads the split in bulk batches into aligned numpy buffers.

  ``n`` (from the dataset info) sizes the buffers up front; when it is unknown,
  the batches are kept and joined at the end (twice the memory).
  """
  _, tfds = import_tf()
  record_bytes = sum(int(np.prod(shape, dtype=np.int64)) * np.dtype(dt).itemsize for shape, dt in specs.values())
  chunk = int(max(1, _CHUNK_BYTES // max(record_bytes, 1)))
  if n is not None:
    chunk = min(chunk, max(n, 1))
  # Buffers in JAX's dtypes (int64 -> int32 with x64 off) so JAX adopts them
  # without a copy; integers that do not fit are an error, never wrapped.
  target = {k: np.dtype(jax.dtypes.canonicalize_dtype(dt)) for k, (_, dt) in specs.items()}
  if n is not None:
    out = {k: _cache.aligned_empty((n, *shape), target[k]) for k, (shape, _) in specs.items()}
  else:
    pieces = {k: [] for k in specs}
  from tqdm.auto import tqdm  # pylint: disable=import-outside-toplevel
  pos = 0
  with tqdm(total=n, desc=f"loading {label}", unit=" records", unit_scale=True, delay=1.0,
            file=sys.stderr, leave=False) as bar:
    for nested in tfds.as_numpy(_dataset(b, split, keys, decoders, batch_size=chunk)):
      batch = dict(flatten_dict(nested))
      m = len(next(iter(batch.values())))
      if n is not None and pos + m > n:
        raise RuntimeError(f"Expected {n} records in {label} (from its dataset info), got more;"
                           " the prepared files disagree with their metadata: prepare it again.")
      for k, v in batch.items():
        v = to_jax_dtype(k, v, target[k], label)
        if n is not None:
          out[k][pos:pos + m] = v
        else:
          pieces[k].append(v)
      pos += m
      bar.update(m)
  if n is None:
    out = {}
    for k, (shape, _) in specs.items():
      out[k] = _cache.aligned_empty((pos, *shape), target[k])
      if pos:
        np.concatenate(pieces[k], out=out[k])
  elif pos != n:
    raise RuntimeError(f"Expected {n} records in {label} (from its dataset info), got {pos};"
                       " the prepared files disagree with their metadata: prepare it again.")
  return out


@quiet
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
  name, data directory, split, keys and mode reads the cache instead, without
  TensorFlow, unless the prepared files changed since.

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
      Wrap them in ``tfds.decode.PartialDecoding`` yourself only if you need
      its nested selection; plain ``{feature: decoder}`` dicts are merged with
      the key selection.
    download: prepare the dataset if it is not prepared yet.
    local_files_only: never download or prepare; fail if nothing is prepared.
    try_gcs: let TFDS read prepared files from its public GCS bucket.
    download_and_prepare_kwargs: passed to ``builder.download_and_prepare``.
    beam_num_workers: prepare Beam-based datasets with Beam's DirectRunner on
      this many processes (needs ``apache-beam``).
    cache: read and write the decoded-array cache (``$TFDS_JAX_CACHE_DIR``,
      default ``~/.cache/tfds_jax``). It is written on a background thread, so
      the first load returns as soon as the arrays are ready; a later load of
      the same data, and the interpreter's exit, wait for the write.
    device: where to put the arrays (default: JAX's default device).

  Returns:
    A :class:`Source` with ``name`` and ``split`` set and ``info`` referring to
    the dataset's ``DatasetInfo`` (get it with :func:`info`); nested features
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
    >>> tfds_jax.info(src).features["label"].names[:3]  # doctest: +SKIP
    ['0', '1', '2']
  """
  if include_keys is not None and exclude_keys is not None:
    raise ValueError(
        f"Expected at most one of include_keys and exclude_keys, got both"
        f" ({sorted(include_keys)} and {sorted(exclude_keys)}); keep one."
    )
  key = cache_key(name, split, data_dir=data_dir, as_supervised=as_supervised,
                  include_keys=include_keys, exclude_keys=exclude_keys)
  use_cache = cache and not decoders and not try_gcs
  if use_cache:
    hit = _cache.read(key)  # no TensorFlow on this path
    if hit is not None:
      arrays, meta = hit
      log.info("loaded %s[%s] from cache %s", meta["name"], split, _cache.entry_dir(key))
      return from_arrays(arrays, name=meta["name"], split=split,
                         info=DatasetInfoRef(meta["info_dir"]), device=device)
  elif cache:
    log.info("not caching %s[%s]: %s.", name, split,
             "custom decoders cannot be fingerprinted" if decoders else "files read from GCS")
  b = builder(name, data_dir=data_dir, try_gcs=try_gcs)
  ensure_prepared(b, download=download, local_files_only=local_files_only,
                  download_and_prepare_kwargs=download_and_prepare_kwargs,
                  beam_num_workers=beam_num_workers)
  num_records = _split_size(b, split)
  keys, asked = select_keys(b, as_supervised=as_supervised, include_keys=include_keys,
                            exclude_keys=exclude_keys, decoders=decoders)
  config = b.builder_config.name if b.builder_config else None
  label = f"{full_name(b)}[{split}]"
  tree = _dataset_tree(b)
  fingerprint = _cache.tree_fingerprint(tree) if use_cache else ""  # of the files decoded below
  start = time.perf_counter()
  if file_format(b) == "array_record":
    reader = _array_record.RandomAccessReader(
        b, split, keys, decoders=decoders, preprocess=None, asked=asked, label=label,
        what="an eager source", fix=_EAGER_FIX)
    try:
      arrays = _array_record.read_all(reader)
    finally:
      reader.close()
    keys = [k for k in keys if any(f.split("/")[0] == k for f in arrays)]
  else:
    keys, specs = _check_specs(b, split, keys, decoders, asked)
    arrays = _read_all(b, split, keys, decoders, num_records, specs, label)
  log.info("decoded %s in %.2fs", label, time.perf_counter() - start)
  ref = info_ref(b)
  if use_cache:
    extra = {"name": full_name(b), "version": str(b.version), "config": config, "keys": keys,
             "info_dir": ref.data_dir}
    _cache.write_async(key, arrays, tree, fingerprint, extra)
  return from_arrays(arrays, name=full_name(b), split=split, info=ref, device=device)


def cache_key(name: str, split: str, *, data_dir=None, as_supervised: bool = False,
              include_keys: Iterable[str] | None = None,
              exclude_keys: Iterable[str] | None = None) -> dict[str, Any]:
  """The decoded-cache key of a :func:`load` request (JSON-able)."""
  return {"format": _cache.FORMAT, "name": name, "split": split, "x64": bool(jax.config.jax_enable_x64),
          "data_dir": os.fspath(data_dir) if data_dir is not None else os.environ.get("TFDS_DATA_DIR"),
          "as_supervised": bool(as_supervised),
          "include_keys": None if include_keys is None else sorted(_as_set(include_keys)),
          "exclude_keys": None if exclude_keys is None else sorted(_as_set(exclude_keys))}


def convert_command(name: str, data_dir: str | os.PathLike) -> str:
  """The command that converts the dataset prepared in ``data_dir`` (its version folder) to ArrayRecord."""
  root = Path(data_dir).parents[1 + name.count("/")]
  return f"tfds-jax prepare {name} --file-format array_record --data-dir {root}"


def full_name(b) -> str:
  """``"name"`` or ``"name/config"`` of a builder."""
  return b.name if b.builder_config is None else f"{b.name}/{b.builder_config.name}"


def info_ref(b) -> DatasetInfoRef:
  """The hashable reference to ``b``'s DatasetInfo that sources carry."""
  ref = DatasetInfoRef(os.fspath(b.data_dir))
  _INFOS[ref.data_dir] = b.info
  return ref


def _as_set(keys: Iterable[str] | str) -> set[str]:
  return {keys} if isinstance(keys, str) else set(keys)


def _dataset_tree(b) -> str:
  """The directory holding every prepared version and config of ``b``'s dataset."""
  path = os.path.abspath(os.fspath(b.data_dir))
  for parent in [Path(path), *Path(path).parents]:
    if parent.name == b.name:
      return os.fspath(parent)
  return path
