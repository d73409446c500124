"""The command line and the demo, the README's main command."""

import os
import re
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
  assert result.returncode == 0
  assert all(command in result.stdout for command in ("demo", "info", "prepare", "bench"))
  with pytest.raises(SystemExit) as e:
    cli.main(["demo", "--epochs", "0"])
  assert e.value.code == 2
  with pytest.raises(SystemExit):
    cli.main(["nonsense"])


def test_demo_reports_unknown_dataset(capsys, tmp_path):
  assert cli.main(["demo", "--dataset", "digitz", "--data-dir", str(tmp_path)]) == 2
  assert "did you mean digits" in capsys.readouterr().err


def test_info_and_prepare_commands(tmp_path, capsys, monkeypatch):
  monkeypatch.setenv("TFDS_JAX_CACHE_DIR", str(tmp_path / "cache"))
  data = str(tmp_path / "data")
  assert cli.main(["info", "digits", "--data-dir", data]) == 0
  out = capsys.readouterr().out
  assert "digits 1.0.0: not prepared" in out and "'label': ClassLabel int64[], 10 classes" in out
  assert f"splits: known once prepared (by `tfds-jax prepare digits --data-dir {data}` or a first load);" in out
  assert "\n  The 1,797 8x8 handwritten digits of the UCI" in out and "0..16, here ...\n" in out  # cut at a word
  assert cli.main(["prepare", "digits", "--data-dir", data]) == 0
  assert "prepared digits in" in capsys.readouterr().out
  assert cli.main(["info", "digits", "--data-dir", data]) == 0
  out = capsys.readouterr().out
  # 1,437 records of 64 uint8 pixels + an int32 label (x64 off) = 68 bytes each.
  assert "digits 1.0.0: prepared" in out and f"train: 1,437 records, {1437 * 68 / 1024:.1f} KiB decoded: fits in memory" in out
  assert "memory budget for eager loading" in out
  assert cli.main(["prepare", "digitz", "--data-dir", data]) == 2
  assert "did you mean digits" in capsys.readouterr().err


def test_array_record_prepared_data_loads_and_info_says_how_it_would_stream(tmp_path, capsys, monkeypatch):
  monkeypatch.setenv("TFDS_JAX_CACHE_DIR", str(tmp_path / "cache"))
  data = str(tmp_path / "ar")
  assert cli.main(["prepare", "digits", "--data-dir", data, "--file-format", "array_record"]) == 0
  assert cli.main(["info", "digits", "--data-dir", data]) == 0
  out = capsys.readouterr().out
  assert "files: array_record" in out and "fits in memory, from_tfds would load it eagerly" in out
  from tfds_jax import _tfds
  monkeypatch.setattr(_tfds, "memory_budget", lambda: (100, "a test budget"))
  assert cli.main(["info", "digits", "--data-dir", data]) == 0
  assert "does not fit the budget, from_tfds would stream it (random access: ArrayRecord files)" in capsys.readouterr().out
  import numpy as np
  import tfds_jax
  from_ar = tfds_jax.load("digits", "test", data_dir=data, cache=False)
  from_tfrecord = tfds_jax.load("digits", "test", data_dir=str(tmp_path / "tfrecord"), cache=False)
  for k in from_ar.data:
    np.testing.assert_array_equal(np.asarray(from_ar.data[k]), np.asarray(from_tfrecord.data[k]))


def test_version():
  import importlib.metadata  # pylint: disable=import-outside-toplevel
  import tfds_jax  # pylint: disable=import-outside-toplevel
  result = subprocess.run([sys.executable, "-m", "tfds_jax", "--version"], capture_output=True, text=True)
  assert result.returncode == 0 and result.stdout.strip() == f"tfds-jax {tfds_jax.__version__}"
  assert tfds_jax.__version__ == importlib.metadata.version("tfds_jax")


def test_cold_demo_prints_one_line_per_event(tmp_path):
  env = {**os.environ, "TFDS_DATA_DIR": str(tmp_path / "data"), "TFDS_JAX_CACHE_DIR": str(tmp_path / "cache"),
         "JAX_PLATFORMS": "cpu"}
  result = subprocess.run([sys.executable, "-m", "tfds_jax", "demo", "--epochs", "1"], capture_output=True,
                          text=True, env=env)
  assert result.returncode == 0, result.stderr
  err = [line for line in result.stderr.splitlines()  # less progress bars (shown after a second)
         if line.strip() and not re.search(r"\d+%\|.*\| .*/s\]$", line.split("\r")[-1])]
  assert [line.split(" in ")[0] for line in err] == [
      "tfds_jax: preparing digits 1.0.0", "tfds_jax: prepared digits 1.0.0", "tfds_jax: decoded digits[train]",
      "tfds_jax: decoded digits[test]"], result.stderr  # no TF banner, absl notes or root-logger copies
  out = result.stdout.splitlines()
  assert len(out) == 3 and out[0].startswith("digits/1.0.0: 1437 train / 360 test records"), result.stdout
  assert out[1].startswith("epoch   1/1  loss") and out[2].startswith("final test accuracy")


def test_prepare_converts_a_dataset_prepared_in_another_format(tmp_path, capsys, monkeypatch):
  import numpy as np  # pylint: disable=import-outside-toplevel
  import tfds_jax  # pylint: disable=import-outside-toplevel
  monkeypatch.setenv("TFDS_JAX_CACHE_DIR", str(tmp_path / "cache"))
  data = tmp_path / "data"
  assert cli.main(["prepare", "digits", "--data-dir", str(data)]) == 0
  eager = tfds_jax.load("digits", "test", data_dir=data)
  with pytest.raises(ValueError, match="convert them once with `tfds-jax prepare digits --file-format array_record"
                                       f" --data-dir {data}`"):
    tfds_jax.stream("digits", "test", data_dir=data, mode="random_access")
  capsys.readouterr()
  assert cli.main(["prepare", "digits", "--data-dir", str(data), "--file-format", "array_record"]) == 0
  captured = capsys.readouterr()
  assert "tfds_jax: converting digits 1.0.0 in" in captured.err and "from tfrecord to array_record" in captured.err
  assert "tfds_jax: converted digits 1.0.0 to array_record in" in captured.err
  assert f"prepared digits in {data / 'digits' / '1.0.0'}" in captured.out
  names = sorted(p.name for p in (data / "digits" / "1.0.0").iterdir())
  assert "digits-test.array_record-00000-of-00001" in names and "digits-test.tfrecord-00000-of-00001" in names
  with tfds_jax.stream("digits", "test", data_dir=data) as s:
    assert s.mode == "random_access"
    batch, _ = tfds_jax.next_batch(s, tfds_jax.init(s), 360)  # the records, in the same order
  again = tfds_jax.load("digits", "test", data_dir=data)  # the cache of the TFRecord-era load is stale
  for k in ("image", "label"):
    np.testing.assert_array_equal(np.asarray(batch[k]), np.asarray(eager.data[k]))
    np.testing.assert_array_equal(np.asarray(again.data[k]), np.asarray(eager.data[k]))
  assert cli.main(["prepare", "digits", "--data-dir", str(data), "--file-format", "array_record"]) == 0
  assert "converting" not in capsys.readouterr().err  # already in that format: nothing to do
