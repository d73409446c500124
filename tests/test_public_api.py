"""The public surface: exports, docstrings that run, and no TensorFlow on import."""

import doctest
import importlib
import inspect
import pkgutil
import subprocess
import sys

import pytest

import tfds_jax


def test_import_does_not_import_tensorflow():
  # nor the optional dependencies of tfds_jax.testing (hypothesis, matplotlib)
  code = ("import sys, tfds_jax, tfds_jax.testing; bad = [m for m in ('tensorflow', 'tensorflow_datasets',"
          " 'hypothesis', 'matplotlib') if m in sys.modules]; print(bad); sys.exit(bool(bad))")
  result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
  assert result.returncode == 0, result.stdout + result.stderr


def test_all_is_complete_and_documented():
  public = {name for name in dir(tfds_jax) if not name.startswith("_") and not inspect.ismodule(getattr(tfds_jax, name))}
  assert set(tfds_jax.__all__) == public - {"annotations"} - {"__version__"}
  for name in tfds_jax.__all__:
    obj = getattr(tfds_jax, name)
    if inspect.isfunction(obj) or hasattr(obj, "__wrapped__"):
      doc = inspect.getdoc(obj) or ""
      for section in ("Args:", "Returns:", "Example:"):
        assert section in doc, f"{name} docstring lacks {section}"


_MODULES = sorted(m.name for m in pkgutil.iter_modules(tfds_jax.__path__, "tfds_jax.") if m.name != "tfds_jax.__main__")


@pytest.mark.parametrize("module", _MODULES)
def test_docstring_examples_run(module):
  mod = importlib.import_module(module)
  result = doctest.testmod(mod, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
  assert result.failed == 0
