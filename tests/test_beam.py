"""Beam-based datasets are prepared on Beam's DirectRunner with ``beam_num_workers`` processes.

The dataset is ``tests/tfds_builders/beam_toy.py``, a tiny TFDS builder whose
``_generate_examples`` returns a Beam PTransform (nothing is downloaded).
"""

import os
from pathlib import Path

import numpy as np
import pytest

beam = pytest.importorskip("apache_beam")  # installed by the test command's `--extra beam`

import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top,wrong-import-position

from tfds_builders import beam_toy  # pylint: disable=wrong-import-position
import tfds_jax  # pylint: disable=wrong-import-position
from tfds_jax import __main__ as cli  # pylint: disable=wrong-import-position
from tfds_jax import _tfds  # pylint: disable=wrong-import-position

TESTS = Path(__file__).resolve().parent


@pytest.fixture(autouse=True)
def beam_env(tmp_path, monkeypatch):
  """A fresh decoded-array cache, tests/ importable in Beam's worker processes, and a
  directory where each process that runs the Beam step leaves a file named by its pid."""
  monkeypatch.setenv("TFDS_JAX_CACHE_DIR", str(tmp_path / "cache"))
  monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(TESTS), os.environ.get("PYTHONPATH")])))
  pids = tmp_path / "pids"
  pids.mkdir()
  monkeypatch.setenv(beam_toy.PIDS_ENV, str(pids))
  return pids


def _worker_pids(pids_dir: Path) -> set[int]:
  return {int(p.name) for p in pids_dir.iterdir()}


def _check_records(source, start: int, stop: int):
  """The source holds exactly the generator's records (in whatever order Beam wrote them)."""
  assert source.num_records == stop - start
  index = np.asarray(source.data["index"])
  assert sorted(index.tolist()) == list(range(start, stop))
  image, label = np.asarray(source.data["image"]), np.asarray(source.data["label"])
  assert image.shape == (stop - start, 6, 6, 1) and image.dtype == np.uint8
  for row, i in enumerate(index.tolist()):
    want = beam_toy.toy_beam_example(i)
    assert int(label[row]) == want["label"], i
    np.testing.assert_array_equal(image[row], want["image"], err_msg=f"record {i}")


def test_two_workers_prepare_in_worker_processes_and_load_every_record(tmp_path, beam_env):
  data_dir = tmp_path / "data"
  train = tfds_jax.load("toy_beam", "train", data_dir=data_dir, beam_num_workers=2)
  # Multi-processing DirectRunner: the Beam step ran in worker processes, not in this one.
  pids = _worker_pids(beam_env)
  assert pids and os.getpid() not in pids, pids
  _check_records(train, 0, beam_toy.TRAIN)
  test = tfds_jax.load("toy_beam", "test", data_dir=data_dir, local_files_only=True)
  _check_records(test, beam_toy.TRAIN, beam_toy.TRAIN + beam_toy.TEST)
  splits = tfds_jax.info(train).splits
  assert splits["train"].num_examples == beam_toy.TRAIN and splits["test"].num_examples == beam_toy.TEST


def test_one_worker_prepares_in_memory_through_the_cli(tmp_path, beam_env, capsys):
  data_dir = tmp_path / "data"
  assert cli.main(["prepare", "toy_beam", "--data-dir", str(data_dir), "--beam-num-workers", "1"]) == 0
  assert "prepared toy_beam" in capsys.readouterr().out
  assert _worker_pids(beam_env) == {os.getpid()}  # in_memory: the Beam step ran in this process
  train = tfds_jax.load("toy_beam", "train", data_dir=data_dir, local_files_only=True)
  _check_records(train, 0, beam_toy.TRAIN)


@pytest.mark.parametrize("workers", [0, -2, True, 1.5, "2"])
def test_bad_worker_count_is_a_clear_error(tmp_path, workers):
  with pytest.raises(ValueError, match=r"Expected beam_num_workers to be None or a positive int, got"):
    tfds_jax.prepare("toy_beam", data_dir=tmp_path / "data", beam_num_workers=workers)
  assert not tfds.builder("toy_beam", data_dir=tmp_path / "data").is_prepared()


@pytest.mark.parametrize("workers, mode", [(1, "in_memory"), (3, "multi_processing"), (np.int64(2), "multi_processing")])
def test_download_config_keeps_the_callers_settings(workers, mode):
  from apache_beam.options.pipeline_options import DirectOptions  # pylint: disable=import-outside-toplevel
  given = tfds.download.DownloadConfig(max_examples_per_split=5)
  config = _tfds._beam_download_config(given, workers)  # pylint: disable=protected-access
  assert config is given and config.max_examples_per_split == 5
  direct = config.beam_options.view_as(DirectOptions)
  assert (direct.direct_num_workers, direct.direct_running_mode) == (workers, mode)
  assert type(direct.direct_num_workers) is int
