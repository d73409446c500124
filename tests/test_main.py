"""The command line and the demo, the README's main command."""

import subprocess
import sys

import pytest

from tfds_jax import __main__ as cli
from tfds_jax import _demo


def test_demo_trains_to_95_percent(tmp_path, monkeypatch):
  monkeypatch.setenv("TFDS_JAX_CACHE_DIR", str(tmp_path / "cache"))
  out = (tmp_path / "log.txt").open("w+")
  result = _demo.run("digits", data_dir=tmp_path / "data", out=out)  # the defaults of `tfds-jax demo`
  assert result["accuracy"] >= 0.95, result
  losses = [h["loss"] for h in result["history"]]
  assert losses[-1] < losses[0] / 5
  out.seek(0)
  text = out.read()
  assert "epoch  15/15" in text and "records/s" in text and "final test accuracy" in text


def test_help_and_bad_arguments():
  result = subprocess.run([sys.executable, "-m", "tfds_jax", "--help"], capture_output=True, text=True)
  assert result.returncode == 0 and "demo" in result.stdout
  with pytest.raises(SystemExit) as e:
    cli.main(["demo", "--epochs", "0"])
  assert e.value.code == 2
  with pytest.raises(SystemExit):
    cli.main(["nonsense"])


def test_demo_reports_unknown_dataset(capsys, tmp_path):
  assert cli.main(["demo", "--dataset", "digitz", "--data-dir", str(tmp_path)]) == 2
  assert "did you mean digits" in capsys.readouterr().err
