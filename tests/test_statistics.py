"""compute_statistics: exact against numpy for any chunking; streams, pipelines, saving."""

import io
import pickle

import jax
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import tfds_jax


@settings(max_examples=15)
@given(n=st.integers(1, 300), chunk=st.integers(1, 400), channels=st.integers(1, 4),
       per_channel=st.booleans(), seed=st.integers(0, 1000))
def test_statistics_match_numpy(n, chunk, channels, per_channel, seed):
  rng = np.random.default_rng(seed)
  images = rng.integers(0, 256, (n, 3, 2, channels)).astype(np.uint8)
  scores = (rng.normal(size=n) * 1e3 + 5e4).astype(np.float32)  # large mean: tests the merge
  src = tfds_jax.from_arrays({"image": images, "score": scores})
  stats = tfds_jax.compute_statistics(src, per_channel=per_channel, chunk_size=chunk)
  axes = (0, 1, 2) if per_channel else None
  x = images.astype(np.float64)
  np.testing.assert_allclose(stats.mean["image"], x.mean(axis=axes), rtol=1e-5)
  np.testing.assert_allclose(stats.std["image"], x.std(axis=axes), rtol=1e-4, atol=1e-4)
  np.testing.assert_array_equal(stats.min["image"], x.min(axis=axes))
  np.testing.assert_array_equal(stats.max["image"], x.max(axis=axes))
  np.testing.assert_allclose(stats.mean["score"], scores.astype(np.float64).mean(), rtol=1e-6)
  np.testing.assert_allclose(stats.std["score"], scores.astype(np.float64).std(), rtol=1e-3)
  assert stats.mean["image"].shape == ((channels,) if per_channel else ())
  assert int(stats.count) == n


def test_statistics_of_a_pipeline_are_of_its_source_and_selected_features():
  data = {"image": np.arange(24, dtype=np.uint8).reshape(4, 2, 1, 3), "label": np.arange(4)}
  src = tfds_jax.from_arrays(data)
  pipe = tfds_jax.pipeline(src, tfds_jax.to_float(), batch_size=2)
  stats = tfds_jax.compute_statistics(pipe, features=["image"])
  assert list(stats.mean) == ["image"]
  np.testing.assert_allclose(stats.mean["image"], data["image"].reshape(-1, 3).mean(0))
  with pytest.raises(KeyError, match=r"Expected features among \['image', 'label'\].*got \['mask'\]"):
    tfds_jax.compute_statistics(src, features=["mask"])


def test_statistics_save_and_restore_with_the_state():
  src = tfds_jax.from_arrays({"image": np.random.default_rng(0).integers(0, 255, (20, 4, 4, 3)).astype(np.uint8)})
  stats = tfds_jax.compute_statistics(src)
  state = tfds_jax.init(src, seed=4, shuffle=True)
  blob = pickle.dumps(jax.device_get({"state": state, "stats": stats}))
  restored = pickle.loads(blob)
  assert isinstance(restored["stats"], tfds_jax.Statistics)
  flat, treedef = jax.tree.flatten(stats)
  np.savez(io.BytesIO(), *flat)  # plain arrays: np.savez takes them as they are
  assert jax.tree.structure(restored["stats"]) == treedef
  for a, b in zip(jax.tree.leaves(restored["stats"]), flat):
    np.testing.assert_array_equal(a, b)
  batch = {"image": src.data["image"][:5]}
  np.testing.assert_array_equal(tfds_jax.normalize(restored["stats"])(None, batch)["image"],
                                tfds_jax.normalize(stats)(None, batch)["image"])


@pytest.mark.parametrize("file_format", ["array_record", "tfrecord"])
def test_statistics_of_a_stream_equal_the_eager_ones(toy_dirs, file_format):
  keys = ["image", "score"]
  eager = tfds_jax.load("toy_images", "train", data_dir=toy_dirs["tfrecord"], include_keys=keys, cache=False)
  with tfds_jax.stream("toy_images", "train", data_dir=toy_dirs[file_format], include_keys=keys) as s:
    streamed = tfds_jax.compute_statistics(s, chunk_size=16)  # 40 records: two chunks and a tail
  expected = tfds_jax.compute_statistics(eager)
  for a, b in zip(jax.tree.leaves(streamed), jax.tree.leaves(expected)):
    np.testing.assert_allclose(a, b, rtol=1e-6)


def test_non_finite_values_are_reported_per_feature_not_propagated():
  x = np.random.default_rng(0).random((50, 4, 4, 3)).astype(np.float32)
  x[3, 0, 0, 1], x[7, 1, 2, 0], x[9, 3, 3, 2] = np.nan, np.inf, -np.inf
  source = tfds_jax.from_arrays({"image": x, "label": np.arange(50)}, name="toy", split="train")
  for chunk in (4096, 7):
    with pytest.raises(ValueError, match=r"Expected finite values in \['image'\] of toy\[train\], got 'image': 1 NaN and 2 infinite of 2400"):
      tfds_jax.compute_statistics(source, chunk_size=chunk)
  stats = tfds_jax.compute_statistics(source, features=["label"])  # leave the feature out
  assert float(stats.mean["label"]) == 24.5


def test_chunk_size_must_be_positive():
  source = tfds_jax.from_arrays({"x": np.arange(5.0)})
  for bad in (0, -1, 2.5):
    with pytest.raises(ValueError, match=f"Expected chunk_size to be a positive int, got {bad}"):
      tfds_jax.compute_statistics(source, chunk_size=bad)
