"""The built wheel installs into a fresh environment, without uv.lock, and works.

The wheel is built from this checkout, installed with its ``tf`` extra into a new
virtual environment (resolved from the package index and uv's cache, as a user's
``pip install "tfds_jax[tf]"`` would be: no lock file), and loads the embedded dataset
there. Skipped when uv is not at hand or the package index cannot be reached.
"""

import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).parent.parent

_CHECK = textwrap.dedent("""
    import importlib.metadata, importlib.util, sys
    from pathlib import Path
    import tfds_jax
    source = tfds_jax.load("digits", "train")
    batch, state = tfds_jax.next_batch(source, tfds_jax.init(source, seed=0, shuffle=True), 32)
    assert batch["image"].shape == (32, 8, 8, 1) and int(state.index) == 32
    package = Path(tfds_jax.__file__).parent
    assert (package / "py.typed").exists() and (package / "_digits.npz").exists()
    files = [str(f) for f in importlib.metadata.files("tfds_jax")]
    assert any(f.endswith("licenses/LICENSE") for f in files), files
    meta = importlib.metadata.metadata("tfds_jax")
    assert meta["License-Expression"] == "Apache-2.0" and meta.get_all("Project-URL")
    extras = ("optax", "sklearn", "matplotlib", "apache_beam", "orbax")  # none is the library's
    print("installed beyond the library:", [m for m in extras if importlib.util.find_spec(m)])
""")


def _uv() -> str | None:
  return os.environ.get("UV") or shutil.which("uv")


@pytest.mark.skipif(_uv() is None, reason="uv is not installed")
def test_wheel_installs_without_the_lock_file_and_loads_the_embedded_dataset(tmp_path):
  uv = _uv()
  env = {**os.environ, "TFDS_DATA_DIR": str(tmp_path / "tfds"), "TFDS_JAX_CACHE_DIR": str(tmp_path / "cache"),
         "JAX_PLATFORMS": "cpu"}
  env.pop("VIRTUAL_ENV", None)
  subprocess.run([uv, "build", "--wheel", "--out-dir", str(tmp_path / "dist"), str(ROOT)], check=True,
                 capture_output=True, env=env)
  wheel, = (tmp_path / "dist").glob("tfds_jax-*.whl")
  venv = tmp_path / "venv"
  subprocess.run([uv, "venv", "--python", sys.executable, str(venv)], check=True, capture_output=True, env=env)
  python = venv / "bin" / "python"
  install = subprocess.run([uv, "pip", "install", "--python", str(python), f"tfds_jax[tf] @ {wheel.as_uri()}"],
                           capture_output=True, text=True, env=env)
  if install.returncode and any(s in install.stderr for s in ("Failed to fetch", "dns error", "Connection")):
    pytest.skip(f"the package index is unreachable: {install.stderr[-300:]}")
  assert install.returncode == 0, install.stderr
  run = subprocess.run([str(python), "-c", _CHECK], capture_output=True, text=True, env=env, cwd=tmp_path)
  assert run.returncode == 0, run.stderr
  assert "installed beyond the library: []" in run.stdout, run.stdout


def test_a_tensorflow_that_does_not_import_is_an_error_naming_what_is_installed(monkeypatch):
  from tfds_jax import _tf  # pylint: disable=import-outside-toplevel
  cause = ImportError("_pywrap_tensorflow_lite_metrics_wrapper.so: undefined symbol")
  two = {"tensorflow": ["tensorflow_cpu", "tensorflow"], "numpy": ["numpy"]}
  monkeypatch.setattr(_tf.importlib.metadata, "packages_distributions", lambda: two)
  monkeypatch.setattr(_tf.importlib.metadata, "version", {"tensorflow": "2.20.0", "tensorflow_cpu": "2.21.0"}.get)
  message = str(_tf.broken_tf(cause))
  assert message.startswith("Expected one TensorFlow, got 2 installed into one environment"
                            " (tensorflow 2.20.0, tensorflow-cpu 2.21.0)"), message
  assert "undefined symbol" in message
  assert "`pip uninstall -y tensorflow tensorflow-cpu && pip install tensorflow==2.20.0`" in message
  monkeypatch.setattr(_tf.importlib.metadata, "packages_distributions", lambda: {"tensorflow": ["tf_nightly"]})
  monkeypatch.setattr(_tf.importlib.metadata, "version", lambda name: "2.22.0.dev1")
  message = str(_tf.broken_tf(cause))
  assert message.startswith("Expected a working TensorFlow, got an ImportError importing tf-nightly 2.22.0.dev1"
                            " (_pywrap"), message
  assert message.endswith("reinstall it (`pip install --force-reinstall tf-nightly`).")
