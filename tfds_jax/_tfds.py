"""Loading TFDS datasets: builders, preparation, ``load``, ``info`` and ``describe``.

Reads through TensorFlow, imported lazily by :mod:`tfds_jax._tf` (never for
what the decoded cache holds); ArrayRecord files through
:mod:`tfds_jax._array_record`; features made static by :mod:`tfds_jax._features`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import difflib
import importlib
import importlib.util
import json
import logging
import os
import socket
import sys
import time
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any, Iterable, Mapping

import jax
import numpy as np

from tfds_jax import _array_record
from tfds_jax import _cache
from tfds_jax import _features
from tfds_jax._tf import _TF_MISSING, _tf_installed, import_tf, import_tfds, quiet
from tfds_jax._source import Source, from_arrays, to_jax_dtype
from tfds_jax._source import check_device as _source_check_device

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

  Embedded datasets (``digits``) are registered first, unless the data
  directory holds a prepared dataset of that name that the embedded builder
  did not write (the user's own): that one is read as it is, with its own
  features, never through the embedded builder. Needs no TensorFlow (TFDS
  reads builders, dataset info and features without it); what reads or
  prepares the files imports it with :func:`import_tf`.

  Raises:
    TypeError: ``name`` is not a string.
    ValueError: the dataset is unknown (the message lists close names), or
      TFDS cannot build the version or config asked for.
  """
  check_request(name, data_dir=data_dir)
  tfds = import_tfds()
  if base_name(name) in _EMBEDDED:
    theirs = _foreign_prepared(name, data_dir)
    if theirs is not None:
      log.info("reading the prepared %s in %s, which tfds_jax's embedded %s did not write",
               base_name(name), theirs, base_name(name))
      return tfds.builder_from_directory(theirs)
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
  except (AssertionError, ValueError) as e:  # a version or config TFDS does not have
    reason = str(e).split('": ', 1)[-1].strip().rstrip(".")
    raise ValueError(
        f"Expected a version and config of {base_name(name)!r} that TFDS can build, got"
        f" {name!r}: {reason}; pass one of those (or just {base_name(name)!r} for the latest)."
    ) from e
  except Exception as e:  # pylint: disable=broad-except
    if not _tf_installed():  # older TFDS (< 4.9.10) cannot make some builders without TF
      raise ImportError(_TF_MISSING) from e
    raise


def _foreign_prepared(name: str, data_dir: str | os.PathLike | None) -> str | None:
  """The directory of a prepared dataset named like an embedded one in
  ``data_dir`` (default: TFDS's) that the embedded builder did not write, or None.

  The version asked for (``"digits:2.0.0"``) if given, else the latest there.
  """
  import json  # pylint: disable=import-outside-toplevel
  root = Path(os.fspath(data_dir) if data_dir is not None else os.environ.get(
      "TFDS_DATA_DIR", Path.home() / "tensorflow_datasets"))
  base, version = base_name(name), name.split(":")[1] if ":" in name else None
  found = []
  for info in root.glob(f"{base}/**/dataset_info.json"):
    try:
      meta = json.loads(info.read_text())
    except (OSError, ValueError):
      continue
    if meta.get("moduleName") != _EMBEDDED[base] and version in (None, meta.get("version")):
      found.append((tuple(int(p) for p in str(meta.get("version", "0")).split(".") if p.isdigit()),
                    os.fspath(info.parent)))
  return max(found)[1] if found else None


_FILE_FORMATS = ("tfrecord", "array_record")


def check_request(name: Any, split: Any = "", *, device: Any = None,
                  beam_num_workers: Any = None, file_format: Any = None, data_dir: Any = None) -> None:
  """Checks the arguments of ``load``, ``stream``, ``prepare`` and ``builder``
  before any work (no TensorFlow): clear errors instead of tracebacks from TFDS.

  Raises:
    TypeError: ``name`` or ``split`` is not a string, ``device`` not a device,
      ``data_dir`` not a path.
    ValueError: an empty name, a bad ``beam_num_workers`` or ``file_format``.
  """
  if not isinstance(name, str) or not name.strip():
    raise (TypeError if not isinstance(name, str) else ValueError)(
        f"Expected a TFDS dataset name (a str such as 'mnist' or 'cifar10:3.0.2'), got"
        f" {name!r} ({type(name).__name__}); pass the name as a string.")
  if not isinstance(split, str):
    raise TypeError(
        f"Expected one split string such as 'train', 'train[:10%]' or 'train+test', got"
        f" {split!r} ({type(split).__name__}); load each split with its own call, or join them"
        " with '+'.")
  _source_check_device(device)
  if data_dir is not None and not isinstance(data_dir, (str, os.PathLike)):
    raise TypeError(f"Expected data_dir to be None or a path (a str or os.PathLike), got"
                    f" {type(data_dir).__name__} {data_dir!r:.80}; pass the directory that holds (or"
                    " will hold) the prepared datasets.")
  if beam_num_workers is not None and (
      isinstance(beam_num_workers, (bool, np.bool_)) or not isinstance(beam_num_workers, (int, np.integer))
      or beam_num_workers < 1):
    raise ValueError(f"Expected beam_num_workers to be None or a positive int, got"
                     f" {beam_num_workers!r}; pass the number of Beam DirectRunner processes,"
                     " 1 or more.")
  file_format = getattr(file_format, "value", file_format)  # tfds.core.FileFormat members too
  if file_format is not None and file_format not in _FILE_FORMATS:
    raise ValueError(f"Expected file_format to be one of {list(_FILE_FORMATS)} (the formats"
                     f" tfds_jax reads), got {file_format!r}; use 'array_record' for random"
                     " access, 'tfrecord' for tf.data.")


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
        f"Expected prepared files for {full_name(b)!r} (version {b.version}) in {b.data_dir},"
        f" found none, and {why} forbids preparing them; prepare it once with"
        f" `tfds-jax prepare {full_name(b)} --data-dir {data_dir_root(b)}`"
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
    ValueError: a ``file_format`` other than ``"tfrecord"`` or
      ``"array_record"``, ``beam_num_workers`` below 1, or the errors of
      :func:`load` for names.

  Example:
    >>> import tfds_jax
    >>> tfds_jax.prepare("digits")  # doctest: +SKIP
    '/root/tensorflow_datasets/digits/1.0.0'
  """
  check_request(name, beam_num_workers=beam_num_workers, data_dir=data_dir,
                file_format=prepare_format(download_and_prepare_kwargs) if file_format is None else file_format)
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
  lines = [f"{full_name(b)} {b.version}: {'prepared' if b.is_prepared() else 'not prepared'} in {b.data_dir}"]
  if (info.description or "").strip():
    line = info.description.strip().splitlines()[0]  # its first paragraph, cut visibly at a word
    lines.append("  " + (line if len(line) <= 200 else line[:200].rsplit(" ", 1)[0] + " ..."))
  lines.append("features (nested ones by path; sizes that vary need shapes={...} to be loaded):")
  record_bytes, fixed = 0, True
  for path, feature, t, group in _feature_leaves(info.features):
    shape = tuple(t.shape)
    numeric = np.dtype(t.np_dtype).kind not in "OSU"
    if numeric and None not in shape:
      record_bytes += int(np.prod(shape, dtype=np.int64)) * np.dtype(jax.dtypes.canonicalize_dtype(t.np_dtype)).itemsize
    elif numeric:
      fixed = False
    extra = f", {feature.num_classes} classes" if hasattr(feature, "num_classes") else ""
    if not numeric:
      note = f"  (text: dropped, or shapes={{{_features.name(path)}: tfds_jax.encode_text(N)}})" \
          if not shape else "  (strings: dropped)"
    elif None not in shape:
      note = ""
    elif group is not None:
      note = f"  (Sequence: shapes={{{_features.name(group)}: tfds_jax.pad(N)}} pads all its fields)"
    elif len(shape) == 3 and None in shape[:2]:
      note = f"  (size varies: shapes={{{_features.name(path)}: tfds_jax.resize(H, W)}})"
    else:
      note = f"  (length varies: shapes={{{_features.name(path)}: tfds_jax.pad(N)}})"
    lines.append(f"  {_features.name(path)}: {type(feature).__name__}"
                 f" {np.dtype(t.np_dtype).name}{list(shape)}{extra}{note}")
  if info.supervised_keys:
    lines.append(f"supervised keys: {info.supervised_keys}")
  budget, where = memory_budget()
  stream = ("random access: ArrayRecord files" if file_format(b) == "array_record"
            else "tf.data: TFRecord files")
  if not info.splits:  # TFDS knows a dataset's splits once it is prepared
    flag = f" --data-dir {data_dir}" if data_dir is not None else ""
    lines.append(f"splits: known once prepared (by `tfds-jax prepare {name}{flag}` or a first load);"
                 f" memory budget for eager loading: {human(budget)}, {where}")
  else:
    lines.append(f"splits (memory budget for eager loading: {human(budget)}, {where}; files: {file_format(b)}):")
  for split, split_info in sorted(info.splits.items()):
    nbytes = record_bytes * split_info.num_examples
    if not fixed:
      size = (", sizes vary: give them with shapes= (then from_tfds can size it; an eager load pads"
              " what varies in one dimension to the longest record)")
    elif nbytes <= budget:
      size = f", {human(nbytes)} decoded: fits in memory, from_tfds would load it eagerly"
    else:
      size = f", {human(nbytes)} decoded: does not fit the budget, from_tfds would stream it ({stream})"
    lines.append(f"  {split}: {split_info.num_examples:,} records{size}")
  return "\n".join(lines)


def _feature_leaves(features, path: tuple = (), group: tuple | None = None):
  """Yields (path, feature, TensorInfo, Sequence path or None) of each leaf of a FeaturesDict."""
  import tensorflow_datasets as tfds  # pylint: disable=import-outside-toplevel
  for key, feature in features.items():
    here = path + (key,)
    if isinstance(feature, tfds.features.FeaturesDict):
      yield from _feature_leaves(feature, here, group)
    elif isinstance(feature, tfds.features.Sequence) and isinstance(feature.feature, tfds.features.FeaturesDict):
      infos = feature.get_tensor_info()
      for child_key, child in feature.feature.items():
        yield here + (child_key,), child, infos[child_key], group or here
    else:
      yield here, feature, feature.get_tensor_info(), group


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
    n = int(b.info.splits[split].num_examples)
  except (KeyError, ValueError, AssertionError) as e:
    raise ValueError(
        f"Expected a split of {full_name(b)!r} such as {sorted(b.info.splits.keys())} (slices like"
        f" 'train[:10%]' work too), got {split!r}; pick one of those."
    ) from e
  if n < 1:  # an empty slice ("train[5:2]" counts -3): nothing to read
    raise ValueError(
        f"Expected a split of {full_name(b)!r} with at least one record, got {split!r}, which"
        f" selects none; check the slice's bounds (start before end, within the split).")
  return n


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
          f"Expected {full_name(b)!r} to define flat supervised_keys for as_supervised=True,"
          f" got {supervised!r}; load with as_supervised=False and choose features"
          " with include_keys."
      )
    features = list(dict.fromkeys(supervised))
    asked = set(features)
  include = _check_keys("include_keys", include_keys, features, full_name(b))
  exclude = _check_keys("exclude_keys", exclude_keys, features, full_name(b))
  _check_keys("decoders keys", list(decoders or {}), list(b.info.features.keys()), full_name(b))
  keys = [k for k in features if (include_keys is None or k in include) and k not in exclude]
  if not keys:
    raise ValueError(f"Expected at least one feature of {full_name(b)!r} to load, got none after"
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


def prepare_format(download_and_prepare_kwargs: Any) -> Any:
  """The ``file_format`` a ``download_and_prepare_kwargs`` asks for, or None."""
  if isinstance(download_and_prepare_kwargs, Mapping):
    return download_and_prepare_kwargs.get("file_format")
  return None


def check_readable(b) -> None:
  """Raises unless ``b`` is prepared in a file format tfds_jax reads (TFRecord, ArrayRecord)."""
  fmt = file_format(b)
  if fmt not in _FILE_FORMATS:  # read as TFRecord, its files would look damaged
    raise ValueError(
        f"Expected {full_name(b)!r} prepared as one of {list(_FILE_FORMATS)} (the formats tfds_jax"
        f" reads), got {fmt} files in {b.data_dir}; prepare it again into another data_dir with"
        f" `tfds-jax prepare {full_name(b)} --file-format array_record --data-dir DIR`.")


def file_format(b) -> str:
  """``"tfrecord"`` or ``"array_record"``: how ``b``'s dataset was prepared."""
  return str(getattr(b.info.file_format, "value", b.info.file_format) or "tfrecord")


_file_format = file_format  # for functions whose file_format parameter shadows it


def _read_all(b, split: str, keys: list[str], decoders, n: int | None, plan: _features.Plan
              ) -> tuple[dict, dict]:
  """Reads the split in bulk batches into aligned numpy buffers, one per feature.

  ``n`` (from the dataset info) sizes the buffers up front; when it is unknown
  (``tfds.testing.mock_data``), or when a size is the split's longest record,
  the batches are kept and joined at the end (twice the memory of those
  features). Records are made static per record inside TensorFlow
  (:func:`_features.apply`), in parallel, unless nothing needs it; then TFDS
  batches the decoded records itself.

  Returns:
    ``(arrays, truncated)``: path -> array, and path -> records truncated.
  """
  _, tfds = import_tf()
  label = plan.label
  record_bytes = sum(int(np.prod([d or 1 for d in shape], dtype=np.int64)) * dt.itemsize
                     for shape, dt in plan.spec.values())
  chunk = int(max(1, _CHUNK_BYTES // max(record_bytes, 1)))
  if n is not None:
    chunk = min(chunk, max(n, 1))
  if plan.identity:  # nothing to do per record: TFDS batches the decoded records
    ds = _dataset(b, split, keys, decoders, batch_size=chunk)
  else:
    tf, _ = import_tf()
    ds = _dataset(b, split, keys, decoders).map(  # a bulk read: as many threads as pay off
        _features.applier(plan, pad=False), num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    ds = ds.padded_batch(chunk, *_features.padding(plan)).prefetch(2)
  # Buffers in JAX's dtypes (int64 -> int32 with x64 off) so JAX adopts them
  # without a copy; integers that do not fit are an error, never wrapped.
  stream_in = n is not None and not plan.longest
  if stream_in:
    out = {p: _cache.aligned_empty((n, *shape), dt) for p, (shape, dt) in plan.spec.items()}
  chunks: list[dict] = []
  truncated: dict = {}
  from tqdm.auto import tqdm  # pylint: disable=import-outside-toplevel
  pos = 0
  with tqdm(total=n, desc=f"loading {label}", unit=" records", unit_scale=True, delay=1.0,
            file=sys.stderr, leave=False) as bar:
    for nested in tfds.as_numpy(ds):
      batch = _features.flatten(_features.check(
          plan, nested, lambda row, pos=pos: f"record {pos + row}", truncated))
      m = len(next(iter(batch.values())))
      if n is not None and pos + m > n:
        raise RuntimeError(f"Expected {n} records in {label} (from its dataset info), got more;"
                           " the prepared files disagree with their metadata: prepare it again.")
      batch = {p: to_jax_dtype(_features.name(p), v, plan.spec[p][1], label) for p, v in batch.items()}
      if stream_in:
        for p, v in batch.items():
          out[p][pos:pos + m] = v
      else:
        chunks.append(batch)
      pos += m
      bar.update(m)
  if n is not None and pos != n:
    raise RuntimeError(f"Expected {n} records in {label} (from its dataset info), got {pos};"
                       " the prepared files disagree with their metadata: prepare it again.")
  if not stream_in:
    out = _features.longest_padding(plan, chunks, pos, _cache.aligned_empty)
  return out, truncated


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
    shapes: Mapping[str | tuple, _features.FixedShape] | None = None,
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
    shapes: how features whose shape varies (or strings) get a static one:
      ``{name: tfds_jax.pad(...) | resize(...) | crop(...) | encode_text(...) |
      tokenize(...)}``; a name is a top-level feature (a Sequence of features,
      such as ``"objects"``, shares one padded length) or a tuple path into a
      nested one. Features with one varying dimension that are not named are
      padded to the longest record of the split; images of varying size need
      a size. Each fixed feature gains a sibling with its true size
      (``<name>_length`` or ``<name>_shape``). See :func:`pad`.
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
    the dataset's ``DatasetInfo`` (get it with :func:`info`). Its ``data``
    has TFDS's structure and names: nested features (a Sequence's fields, a
    ``FeaturesDict``) are nested dicts, and a top-level name with a ``/``
    (``"image/filename"``) stays one name.

  Raises:
    ValueError: unknown dataset (close names listed), a version or config
      TFDS cannot build, unknown split (splits listed), both include and
      exclude keys, unknown keys (the dataset's keys listed), string features
      asked for by name without an encoding, images of varying size without a
      size, a record longer than its fixed size (unless the option truncates),
      ``beam_num_workers`` below 1 (checked even when the dataset is prepared).
    TypeError: ``name`` or ``split`` is not a string (one split per call:
      join several with ``+``), ``device`` is not a device or sharding.
    RecordError: damaged prepared files or records (naming the file).
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
  check_request(name, split, device=device, beam_num_workers=beam_num_workers, data_dir=data_dir,
                file_format=prepare_format(download_and_prepare_kwargs))
  if include_keys is not None and exclude_keys is not None:
    raise ValueError(
        f"Expected at most one of include_keys and exclude_keys, got both"
        f" ({sorted(include_keys)} and {sorted(exclude_keys)}); keep one."
    )
  if include_keys is not None and not _as_set(include_keys):  # before the cache, whatever it holds
    raise ValueError(f"Expected at least one feature of {name!r} to load, got none after"
                     " include_keys/exclude_keys (include_keys is empty); name the features to"
                     " load, or leave include_keys out for all of them.")
  shapes_key = _features.cache_key(shapes)
  key = cache_key(name, split, data_dir=data_dir, as_supervised=as_supervised,
                  include_keys=include_keys, exclude_keys=exclude_keys, shapes=shapes)
  use_cache = cache and not decoders and not try_gcs and (shapes_key is not None)
  if use_cache:
    hit = _cache.read(key)  # no TensorFlow on this path
    if hit is not None:
      arrays, meta = hit
      log.info("loaded %s[%s] from cache %s", meta["name"], split, _cache.entry_dir(key))
      for path, count in meta.get("truncated", []):
        log.warning("%s of %s[%s]: %d record(s) were truncated when it was cached (truncate=True)",
                    _features.name(tuple(path)), meta["name"], split, count)
      return from_arrays(_unflatten_cached(arrays), name=meta["name"], split=split,
                         info=DatasetInfoRef(meta["info_dir"]), device=device)
  elif cache:
    why = ("custom decoders cannot be fingerprinted" if decoders else "files read from GCS"
           if try_gcs else "a tokenizer without cache_key cannot be fingerprinted")
    log.info("not caching %s[%s]: %s", name, split, why)
  b = builder(name, data_dir=data_dir, try_gcs=try_gcs)
  ensure_prepared(b, download=download, local_files_only=local_files_only,
                  download_and_prepare_kwargs=download_and_prepare_kwargs,
                  beam_num_workers=beam_num_workers)
  check_readable(b)
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
        b, split, keys, decoders=decoders, preprocess=None, shapes=shapes, eager=True, asked=asked,
        label=label)
    try:
      arrays, truncated = _array_record.read_all(reader)
    finally:
      reader.close()
    plan = reader.plan
  else:
    ds = _dataset(b, split, keys, decoders)
    plan = _features.plan_for(b, ds.element_spec, keys, shapes=shapes, eager=True, asked=asked,
                         label=label, what="an eager load", user_fns=bool(decoders),
                         peek=lambda: list(import_tf()[1].as_numpy(ds.take(8))))
    tf, _ = import_tf()
    try:
      arrays, truncated = _read_all(b, split, keys, decoders, num_records, plan)
    except tf.errors.OpError as e:  # damaged files: name them, not TensorFlow's internals
      raise _array_record.damaged(b, split, label, e, "reading them whole") from e
  _features.report_truncated(plan, truncated, len(next(iter(arrays.values()))))
  log.info("decoded %s in %.2fs", label, time.perf_counter() - start)
  ref = info_ref(b)
  if use_cache:
    extra = {"name": full_name(b), "version": str(b.version), "config": config, "keys": keys,
             "info_dir": ref.data_dir, "truncated": [[list(p), c] for p, c in truncated.items()]}
    _cache.write_async(key, {json.dumps(list(p)): v for p, v in arrays.items()}, tree, fingerprint,
                       extra)
  return from_arrays(_features.unflatten(arrays), name=full_name(b), split=split, info=ref,
                     device=device)


def _unflatten_cached(arrays: Mapping[str, np.ndarray]) -> dict:
  """Cache entries name each array by its JSON-encoded path."""
  return _features.unflatten({tuple(json.loads(k)): v for k, v in arrays.items()})


def data_dir_root(b) -> str:
  """The ``data_dir`` that holds ``b``'s dataset (its prepared files sit in NAME[/CONFIG]/VERSION)."""
  return os.fspath(Path(b.data_dir).parents[2 if b.builder_config is not None else 1])


def cache_key(name: str, split: str, *, data_dir=None, as_supervised: bool = False,
              include_keys: Iterable[str] | None = None,
              exclude_keys: Iterable[str] | None = None,
              shapes: Mapping[Any, _features.FixedShape] | None = None) -> dict[str, Any]:
  """The decoded-cache key of a :func:`load` request (JSON-able); the data are stored
  nested (``layout``) and made static by ``shapes`` (part of the key)."""
  return {"format": _cache.FORMAT, "layout": "nested", "name": name, "split": split,
          "x64": bool(jax.config.jax_enable_x64),
          "data_dir": os.fspath(data_dir) if data_dir is not None else os.environ.get("TFDS_DATA_DIR"),
          "as_supervised": bool(as_supervised),
          "include_keys": None if include_keys is None else sorted(_as_set(include_keys)),
          "exclude_keys": None if exclude_keys is None else sorted(_as_set(exclude_keys)),
          "shapes": _features.cache_key(shapes)}


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
