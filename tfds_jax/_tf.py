"""TensorFlow, imported lazily, kept off accelerators, and quiet.

tfds_jax reads TFDS files with TensorFlow, but ``import tfds_jax`` never imports
it, nor does anything that reads the decoded cache. The first read imports it
here, without its start-up banner and hidden from every GPU and TPU, so it only
ever reads on the CPU and never takes memory from JAX. TFDS (which needs no
TensorFlow for builders, dataset info and features) is imported here too, and
its known noise is dropped around tfds_jax's own calls.
"""

from __future__ import annotations

import contextlib
import functools
import importlib.metadata
import importlib.util
import logging
import os
import re
import sys
import tempfile
import threading
import warnings

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
      raise broken_tf(e) from e
  import tensorflow as tf  # pylint: disable=import-outside-toplevel
  _hide_accelerators(tf)
  return tf, import_tfds()


def broken_tf(error: ImportError) -> ImportError:
  """The error for a TensorFlow that is installed but does not import, naming what is installed.

  Two flavours (``tensorflow`` and ``tensorflow-cpu``, say) share the folder
  ``tensorflow/``: the one installed last overwrote some of the other's files.
  """
  found = _tf_distributions()
  if len(found) > 1:
    names = " ".join(name for name, _ in found)
    return ImportError(
        f"Expected one TensorFlow, got {len(found)} installed into one environment"
        f" ({', '.join(f'{n} {v}' for n, v in found)}), which share the folder tensorflow/ and"
        f" break each other (importing it: {error}); uninstall all of them and reinstall the one"
        f" you want: `pip uninstall -y {names} && pip install {found[0][0]}=={found[0][1]}`"
        " (where TensorFlow is installed, install tfds_jax without the `tf` extra).")
  what = f"{found[0][0]} {found[0][1]}" if found else "TensorFlow"
  return ImportError(
      f"Expected a working TensorFlow, got an ImportError importing {what} ({error}); reinstall"
      f" it (`pip install --force-reinstall {found[0][0] if found else 'tensorflow-cpu'}`).")


def _tf_distributions() -> list[tuple[str, str]]:
  """(name, version) of each installed distribution that provides the ``tensorflow`` package."""
  try:
    names = importlib.metadata.packages_distributions().get("tensorflow", [])
    return sorted({(re.sub(r"[-_.]+", "-", name).lower(), importlib.metadata.version(name)) for name in names})
  except (OSError, ValueError, importlib.metadata.PackageNotFoundError):  # only for a message
    return []


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


def _tf_installed() -> bool:
  try:
    return sys.modules.get("tensorflow") is not None or importlib.util.find_spec("tensorflow") is not None
  except (ImportError, ValueError):
    return False

def tf_error_text(error) -> str:
  """The line of a TensorFlow error that says what went wrong (not where)."""
  lines = [line.strip() for line in error.message.splitlines() if line.strip()]
  noise = ("Graph execution error", "Detected at node", "File ", "[[")
  useful = [line for line in lines if not line.startswith(noise)]
  return (useful or lines or ["(no message)"])[0][:500]
