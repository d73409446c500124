"""The decoded-array cache: write once after decoding, read back without TensorFlow.

An entry is a directory of ``.npy`` files (one per feature) and a ``meta.json``
that names what it holds (the load request: dataset, split, keys, mode; and the
version and config it resolved to), a fingerprint of the prepared files it was
decoded from, and CRC-32 checksums covering every byte of each array file (its
header, then each 4 MiB block of its data), all checked on every read;
``meta.json`` carries a checksum of its own content. Reading an entry
needs no TensorFlow. An entry is written in a temporary directory and renamed
into place, so a crash never leaves a half-written entry that looks valid, and
the temporary directories of writers that died (``kill -9``) on this machine
are removed by the next load. An entry that is stale (the dataset was prepared
again) or damaged (any byte changed, truncated, extended) is detected on read,
reported, and rebuilt.

A read maps the files (the arrays are the file's pages, not copies; JAX on the
CPU adopts them as they are, the ``.npy`` data being 64-byte aligned).
"""

from __future__ import annotations

import concurrent.futures
import hashlib
import io
import json
import logging
import os
import shutil
import socket
import threading
import zlib
from pathlib import Path
from typing import Any, Mapping

import numpy as np

log = logging.getLogger("tfds_jax")

FORMAT = 2
_ALIGN = 64
_BLOCK = 4 << 20  # bytes per checksum: small enough to stay in cache between read and check
_HOST = "".join(c if c.isalnum() or c in "-_." else "_" for c in socket.gethostname()) or "host"


def root() -> Path:
  """Returns the cache root: ``$TFDS_JAX_CACHE_DIR`` or ``~/.cache/tfds_jax``."""
  return Path(os.environ.get("TFDS_JAX_CACHE_DIR", Path.home() / ".cache" / "tfds_jax"))


def aligned_empty(shape: tuple[int, ...], dtype: Any) -> np.ndarray:
  """Returns an uninitialized array whose buffer is 64-byte aligned.

  Args:
    shape: array shape.
    dtype: numpy dtype.

  Returns:
    A C-contiguous array of that shape and dtype.

  Example:
    >>> aligned_empty((3, 5), np.float32).ctypes.data % 64
    0
  """
  dtype = np.dtype(dtype)
  nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
  raw = np.empty(nbytes + _ALIGN, np.uint8)
  offset = (-raw.ctypes.data) % _ALIGN
  return raw[offset:offset + nbytes].view(dtype).reshape(shape)


def entry_dir(key: Mapping[str, Any]) -> Path:
  """Returns the directory of the entry for ``key`` (a JSON-able dict)."""
  digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:20]
  name = "".join(c if c.isalnum() or c in "-_." else "_" for c in str(key.get("name", "data")))
  return root() / name / digest


def _checksums(header: bytes, data: memoryview) -> list[int]:
  """CRC-32 of the header, then of each ``_BLOCK`` bytes of the data."""
  return [zlib.crc32(header)] + [zlib.crc32(data[i:i + _BLOCK]) for i in range(0, len(data), _BLOCK)]


def _read_npy(path: Path, shape: tuple[int, ...], dtype: np.dtype, checksums: list[int],
              pool: concurrent.futures.Executor) -> np.ndarray:
  """Maps a ``.npy`` file read-only and checks every byte against ``checksums``.

  The array is the file's own pages, not a copy (an entry never changes in
  place: a rewrite replaces its directory, and a mapped file outlives its
  removal). The blocks' checksums are computed on ``pool`` (zlib releases the GIL).
  """
  nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
  with open(path, "rb") as f:
    size = os.fstat(f.fileno()).st_size
    if size <= nbytes:
      raise ValueError(f"{path.name} holds {size} bytes, fewer than its {nbytes} data bytes and a header")
    header = f.read(size - nbytes)  # checked before numpy parses it: damage must never reach the parser
    got = [zlib.crc32(header)]
    if got[0] != checksums[0]:
      raise ValueError(f"{path.name} does not match its checksums (its header changed, or bytes were"
                       " added or removed)")
    parsed = io.BytesIO(header)
    version = np.lib.format.read_magic(parsed)
    read_header = {(1, 0): np.lib.format.read_array_header_1_0,
                   (2, 0): np.lib.format.read_array_header_2_0}.get(version)
    if read_header is None:
      raise ValueError(f"unsupported .npy version {version}")
    got_shape, fortran, got_dtype = read_header(parsed)
    if tuple(got_shape) != shape or got_dtype != dtype or fortran or parsed.tell() != len(header):
      raise ValueError(f"header says {got_dtype}{list(got_shape)}, meta says {dtype}{list(shape)}")
  if not nbytes:
    return np.empty(shape, dtype)
  out = np.memmap(path, dtype, "r", len(header), shape)  # the data: the bytes after the header
  data = memoryview(out.reshape(-1).view(np.uint8))
  got += pool.map(zlib.crc32, (data[i:i + _BLOCK] for i in range(0, nbytes, _BLOCK)))
  if got != checksums:
    bad = next((i for i, (a, b) in enumerate(zip(got, checksums)) if a != b), 0)
    where = "its header" if bad == 0 else f"bytes {(bad - 1) * _BLOCK} to {bad * _BLOCK} of its data"
    raise ValueError(f"{path.name} does not match its checksums ({where} changed)")
  return out


def _meta_checksum(meta: Mapping[str, Any]) -> int:
  return zlib.crc32(json.dumps({k: v for k, v in meta.items() if k != "checksum"},
                               sort_keys=True).encode())


def tree_fingerprint(path: str | os.PathLike) -> str:
  """Names, sizes and mtimes of every file under ``path``: changes whenever the
  dataset there is prepared again or another version is added."""
  h = hashlib.sha256()
  for dirpath, dirnames, filenames in os.walk(path):
    dirnames.sort()
    for name in sorted(filenames):
      st = os.stat(os.path.join(dirpath, name))
      h.update(f"{os.path.relpath(os.path.join(dirpath, name), path)}:{st.st_size}:{st.st_mtime_ns};".encode())
  return h.hexdigest()


def read(key: Mapping[str, Any]) -> tuple[dict[str, np.ndarray], dict[str, Any]] | None:
  """Returns the cached arrays for ``key`` and their metadata, or None.

  None when there is no entry, or when it is stale (the prepared files it was
  decoded from changed) or damaged; such an entry is logged and removed, so the
  caller rebuilds it. Uses no TensorFlow.

  Args:
    key: what the entry holds (the load request: dataset, split, keys, mode).

  Returns:
    ``(arrays, meta)``: feature name -> aligned numpy array, and the ``extra``
    metadata given to :func:`write`; or None.
  """
  flush(key)
  path = entry_dir(key)
  remove_orphans(path.parent)
  meta_path = path / "meta.json"
  if not meta_path.exists():
    return None
  try:
    meta = json.loads(meta_path.read_text())
    if meta.get("format") != FORMAT or meta.get("key") != json.loads(json.dumps(key)):
      raise ValueError("it was written for another key or cache format")
    if meta.get("checksum") != _meta_checksum(meta):
      raise ValueError("meta.json does not match its checksum")
    if tree_fingerprint(meta["tree"]) != meta["fingerprint"]:
      log.warning("cache at %s is stale (the dataset in %s changed); rebuilding it.",
                  path, meta["tree"])
      shutil.rmtree(path, ignore_errors=True)
      return None
    arrays = {}
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
      for feature in meta["features"]:
        arrays[feature["name"]] = _read_npy(path / feature["file"], tuple(feature["shape"]),
                                            np.dtype(feature["dtype"]), feature["checksums"], pool)
    return arrays, meta["extra"]
  except Exception as e:  # pylint: disable=broad-except  # whatever a damaged entry raises, it is not used
    log.warning("cache at %s is damaged (%s: %s); rebuilding it.", path, type(e).__name__, e)
    shutil.rmtree(path, ignore_errors=True)
    return None


_PENDING: dict[Path, threading.Thread] = {}
_LOCK = threading.Lock()


def write_async(key: Mapping[str, Any], arrays: Mapping[str, np.ndarray], tree: str | os.PathLike,
                fingerprint: str, extra: Mapping[str, Any]) -> threading.Thread:
  """Writes the entry on a background thread, so the load returns at once.

  The arrays are read-only from here on. The thread is not a daemon: the
  interpreter waits for it at exit. A failure is logged, not raised (the cache
  is an optimization). :func:`read` and :func:`flush` wait for pending writes.
  """
  path = entry_dir(key)

  def work():
    try:
      write(key, arrays, tree, fingerprint, extra)
    except Exception as e:  # pylint: disable=broad-except
      log.warning("could not write the cache at %s (%s); loads will decode again.", path, e)

  flush(key)
  thread = threading.Thread(target=work, name=f"tfds_jax-cache-{path.name}", daemon=False)
  with _LOCK:
    _PENDING[path] = thread
  thread.start()
  return thread


def flush(key: Mapping[str, Any] | None = None) -> None:
  """Waits for pending cache writes (of ``key``, or all of them)."""
  with _LOCK:
    threads = list(_PENDING.values()) if key is None else [_PENDING.get(entry_dir(key))]
  for thread in threads:
    if thread is not None:
      thread.join()
  with _LOCK:
    for path, thread in list(_PENDING.items()):
      if not thread.is_alive():
        del _PENDING[path]


def write(key: Mapping[str, Any], arrays: Mapping[str, np.ndarray], tree: str | os.PathLike,
          fingerprint: str, extra: Mapping[str, Any]) -> Path:
  """Writes ``arrays`` as the entry for ``key``, atomically replacing any old one.

  Args:
    key: what the entry holds (JSON-able).
    arrays: feature name -> array.
    tree: the directory of prepared files the arrays were decoded from; the
      entry is stale once :func:`tree_fingerprint` of it changes.
    fingerprint: ``tree_fingerprint(tree)`` taken before decoding, so that
      files changed while decoding make the entry stale.
    extra: JSON-able metadata returned by :func:`read`.

  Returns:
    The entry's directory.
  """
  path = entry_dir(key)
  path.parent.mkdir(parents=True, exist_ok=True)
  remove_orphans(path.parent)
  tmp = path.parent / f".{path.name}{_TMP}{_HOST}-{os.getpid()}"
  shutil.rmtree(tmp, ignore_errors=True)
  tmp.mkdir()
  try:
    features = []
    for i, (name, array) in enumerate(arrays.items()):
      file = tmp / f"{i}.npy"
      array = np.ascontiguousarray(array)
      with open(file, "wb") as f:
        np.lib.format.write_array(f, array, allow_pickle=False)
      data = memoryview(array.reshape(-1).view(np.uint8))
      with open(file, "rb") as f:
        header = f.read(file.stat().st_size - len(data))
      features.append({"name": name, "file": file.name, "shape": list(array.shape),
                       "dtype": np.dtype(array.dtype).str, "checksums": _checksums(header, data)})
    meta = {"format": FORMAT, "key": key, "tree": os.fspath(tree), "fingerprint": fingerprint,
            "extra": extra, "features": features}
    meta["checksum"] = _meta_checksum(json.loads(json.dumps(meta)))
    (tmp / "meta.json").write_text(json.dumps(meta, indent=1))
    shutil.rmtree(path, ignore_errors=True)
    os.replace(tmp, path)
  except BaseException:
    shutil.rmtree(tmp, ignore_errors=True)
    raise
  return path


_TMP = ".tmp-"


def remove_orphans(directory: Path) -> None:
  """Removes the temporary entries in ``directory`` of writers on this machine
  that are no longer running (killed mid-write); never raises."""
  try:
    names = [n for n in os.listdir(directory) if n.startswith(".") and _TMP in n]
  except OSError:
    return
  for name in names:
    owner = name.rsplit(_TMP, 1)[1]
    host, _, pid = owner.rpartition("-")
    if (host or _HOST) != _HOST or not pid.isdigit() or _alive(int(pid)):
      continue
    log.info("removing %s, left by process %s that stopped while writing it", directory / name, pid)
    shutil.rmtree(directory / name, ignore_errors=True)


def _alive(pid: int) -> bool:
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except OSError:  # no permission: it exists
    return True
  return True


def peek(key: Mapping[str, Any]) -> dict[str, Any] | None:
  """The metadata of the entry for ``key`` (features with shapes and dtypes), or None.

  Reads only ``meta.json`` (nothing is verified: :func:`read` does that), so a
  caller can size an entry without reading it or importing TensorFlow.
  """
  flush(key)
  try:
    meta = json.loads((entry_dir(key) / "meta.json").read_text())
  except (OSError, ValueError):
    return None
  return meta if meta.get("format") == FORMAT and meta.get("key") == json.loads(json.dumps(key)) else None
