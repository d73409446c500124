"""The decoded-array cache: write once after decoding, read back without TensorFlow.

An entry is a directory of ``.npy`` files (one per feature) and a ``meta.json``
that names what it holds (the load request: dataset, split, keys, mode; and the
version and config it resolved to), a fingerprint of the prepared files it was
decoded from, and a sampled digest of each array file. Reading an entry needs
no TensorFlow. An entry is written in a temporary directory and renamed into
place, so a crash never leaves a half-written entry that looks valid; one that
is stale (the dataset was prepared again) or damaged (truncated, overwritten)
is detected on read, reported, and rebuilt.

Buffers are 64-byte aligned so that JAX on the CPU adopts them without a copy.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import threading
from pathlib import Path
from typing import Any, Mapping

import numpy as np

log = logging.getLogger("tfds_jax")

FORMAT = 1
_ALIGN = 64
_SAMPLE_BLOCKS = 16
_SAMPLE_BYTES = 1 << 16


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


def _sampled_digest(path: Path) -> str:
  """blake2b of the file size and 16 evenly spaced 64 KiB blocks (whole file if small)."""
  size = path.stat().st_size
  h = hashlib.blake2b(str(size).encode(), digest_size=16)
  with open(path, "rb") as f:
    if size <= _SAMPLE_BLOCKS * _SAMPLE_BYTES:
      h.update(f.read())
    else:
      for i in range(_SAMPLE_BLOCKS):
        f.seek((size - _SAMPLE_BYTES) * i // (_SAMPLE_BLOCKS - 1))
        h.update(f.read(_SAMPLE_BYTES))
  return h.hexdigest()


def _read_npy(path: Path, shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
  with open(path, "rb") as f:
    version = np.lib.format.read_magic(f)
    read_header = {(1, 0): np.lib.format.read_array_header_1_0,
                   (2, 0): np.lib.format.read_array_header_2_0}.get(version)
    if read_header is None:
      raise ValueError(f"unsupported .npy version {version}")
    got_shape, fortran, got_dtype = read_header(f)
    if tuple(got_shape) != shape or got_dtype != dtype or fortran:
      raise ValueError(f"header says {got_dtype}{list(got_shape)}, meta says {dtype}{list(shape)}")
    out = aligned_empty(shape, dtype)
    view = memoryview(out.reshape(-1).view(np.uint8))
    got = f.readinto(view)
    if got != out.nbytes or f.read(1):
      raise ValueError(f"holds {got} data bytes, expected {out.nbytes}")
  return out


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
  meta_path = path / "meta.json"
  if not meta_path.exists():
    return None
  try:
    meta = json.loads(meta_path.read_text())
    if meta.get("format") != FORMAT or meta.get("key") != json.loads(json.dumps(key)):
      raise ValueError("it was written for another key or cache format")
    if tree_fingerprint(meta["tree"]) != meta["fingerprint"]:
      log.warning("cache at %s is stale (the dataset in %s changed); rebuilding it.",
                  path, meta["tree"])
      shutil.rmtree(path, ignore_errors=True)
      return None
    arrays = {}
    for feature in meta["features"]:
      file = path / feature["file"]
      if _sampled_digest(file) != feature["digest"]:
        raise ValueError(f"{file.name} does not match its recorded digest")
      arrays[feature["name"]] = _read_npy(file, tuple(feature["shape"]), np.dtype(feature["dtype"]))
    return arrays, meta["extra"]
  except (OSError, ValueError, KeyError, TypeError) as e:
    log.warning("cache at %s is damaged (%s); rebuilding it.", path, e)
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
  tmp = path.parent / f".{path.name}.tmp-{os.getpid()}"
  shutil.rmtree(tmp, ignore_errors=True)
  tmp.mkdir()
  try:
    features = []
    for i, (name, array) in enumerate(arrays.items()):
      file = tmp / f"{i}.npy"
      with open(file, "wb") as f:
        np.lib.format.write_array(f, np.ascontiguousarray(array), allow_pickle=False)
      features.append({"name": name, "file": file.name, "shape": list(array.shape),
                       "dtype": np.dtype(array.dtype).str, "digest": _sampled_digest(file)})
    meta = {"format": FORMAT, "key": key, "tree": os.fspath(tree), "fingerprint": fingerprint,
            "extra": extra, "features": features}
    (tmp / "meta.json").write_text(json.dumps(meta, indent=1))
    shutil.rmtree(path, ignore_errors=True)
    os.replace(tmp, path)
  except BaseException:
    shutil.rmtree(tmp, ignore_errors=True)
    raise
  return path


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
