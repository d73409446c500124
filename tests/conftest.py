"""Shared test settings: hypothesis profiles and small array helpers."""

import os

# Tests run on the CPU; keep TensorFlow quiet and off any accelerator.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")
# Eight CPU devices for the sharding tests (set before JAX starts its backends).
if "xla_force_host_platform_device_count" not in os.environ.get("XLA_FLAGS", ""):
  os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8").strip()

import pytest
from hypothesis import HealthCheck, settings

settings.register_profile(
    "default",
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
    print_blob=True,
)
settings.register_profile(
    "thorough",
    max_examples=300,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
    print_blob=True,
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "default"))


@pytest.fixture(scope="session")
def toy_dirs(tmp_path_factory):
  """tfds_builders.ToyImages prepared once per session, as ArrayRecord and as TFRecord."""
  import tfds_builders  # pylint: disable=import-outside-toplevel
  dirs = {}
  for file_format in ("array_record", "tfrecord"):
    dirs[file_format] = tmp_path_factory.mktemp(file_format)
    tfds_builders.ToyImages(data_dir=dirs[file_format]).download_and_prepare(file_format=file_format)
  return dirs
