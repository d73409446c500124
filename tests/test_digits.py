"""The embedded dataset: scikit-learn's real digits, prepared offline."""

import numpy as np
import pytest
from sklearn.datasets import load_digits

import tfds_jax


@pytest.fixture(scope="module")
def digits_dir(tmp_path_factory):
  return tmp_path_factory.mktemp("digits_data")


@pytest.mark.parametrize("split, count, is_test", [("train", 1437, False), ("test", 360, True)])
def test_digits_match_scikit_learn(digits_dir, split, count, is_test):
  source = tfds_jax.load("digits", split, data_dir=digits_dir, cache=False)
  assert source.num_records == count
  ref = load_digits()
  keep = (np.arange(len(ref.target)) % 5 == 0) == is_test
  images = np.round(ref.images[keep] * 255 / 16).astype(np.uint8)[..., None]
  # TFDS stores records in its own order: compare as multisets of (image, label).
  got = sorted(zip(np.asarray(source.data["image"]).reshape(count, -1).tolist(), np.asarray(source.data["label"]).tolist()))
  want = sorted(zip(images.reshape(count, -1).tolist(), ref.target[keep].tolist()))
  assert got == want
  info = tfds_jax.info(source)
  assert info.supervised_keys == ("image", "label") and info.features["label"].num_classes == 10
