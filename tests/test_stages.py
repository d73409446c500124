"""Stages: built-in transforms are right, keys are per record and per position, chain composes."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import tfds_jax

RNG = np.random.default_rng(0)
IMAGES = RNG.integers(0, 256, (6, 5, 7, 3)).astype(np.uint8)
LABELS = np.array([0, 1, 2, 3, 4, 5])


def _batch():
  return {"image": IMAGES, "label": LABELS}


def _keys(size=6, seed=0, epoch=0, index=0, n=100):
  return tfds_jax.record_keys(seed, epoch, index, size, n)


@given(seed=st.integers(0, 2**32 - 1), n=st.integers(2, 300), data=st.data())
def test_record_keys_depend_only_on_position(seed, n, data):
  epoch = data.draw(st.integers(0, 2**31 - 2))
  index = data.draw(st.integers(0, n - 1))
  size = data.draw(st.integers(2, n))
  cut = data.draw(st.integers(1, size - 1))
  whole = jax.random.key_data(tfds_jax.record_keys(seed, epoch, index, size, n))
  head = jax.random.key_data(tfds_jax.record_keys(seed, epoch, index, cut, n))
  # the second piece starts at position index + cut, possibly in the next epoch
  e2, i2 = (epoch, index + cut) if index + cut < n else (epoch + 1, index + cut - n)
  tail = jax.random.key_data(tfds_jax.record_keys(seed, e2, i2, size - cut, n))
  np.testing.assert_array_equal(whole, np.concatenate([head, tail]))
  base = jax.random.key(np.uint32(seed))
  e_last, i_last = (epoch, index + size - 1) if index + size - 1 < n else (epoch + 1, index + size - 1 - n)
  expected = jax.random.fold_in(jax.random.fold_in(base, e_last), i_last)
  np.testing.assert_array_equal(whole[-1], jax.random.key_data(expected))


def test_record_keys_differ_across_epochs_and_seeds():
  a = jax.random.key_data(_keys(epoch=0))
  assert not np.array_equal(a, jax.random.key_data(_keys(epoch=1)))
  assert not np.array_equal(a, jax.random.key_data(_keys(seed=1)))
  assert len({tuple(k) for k in np.asarray(a)}) == 6


def test_to_float_scales_and_casts():
  out = tfds_jax.to_float()(None, _batch())
  assert out["image"].dtype == jnp.float32
  np.testing.assert_allclose(out["image"], IMAGES / 255.0, rtol=1e-6)
  np.testing.assert_array_equal(out["label"], LABELS)
  half = tfds_jax.to_float(["image", "label"], scale=0.5, dtype=jnp.bfloat16)(None, _batch())
  assert half["label"].dtype == jnp.bfloat16 and float(half["label"][4]) == 2.0


def test_normalize_with_given_and_computed_statistics():
  mean, std = np.array([1.0, 2.0, 3.0]), np.array([2.0, 4.0, 0.0])
  out = tfds_jax.normalize(mean=mean, std=std)(None, _batch())
  expected = (IMAGES - mean) / np.array([2.0, 4.0, 1.0])  # zero std divides by 1
  np.testing.assert_allclose(out["image"], expected, rtol=1e-5)
  stats = tfds_jax.compute_statistics(tfds_jax.from_arrays(_batch()))
  z = tfds_jax.normalize(stats)(None, _batch())["image"]
  np.testing.assert_allclose(np.mean(z, axis=(0, 1, 2)), 0.0, atol=1e-5)
  np.testing.assert_allclose(np.std(z, axis=(0, 1, 2)), 1.0, rtol=1e-4)
  with pytest.raises(ValueError, match="Expected either stats= or both mean= and std="):
    tfds_jax.normalize(mean=mean)


def test_random_flip_flips_whole_records_with_the_keys_coin():
  keys = _keys()
  out = tfds_jax.random_flip(["image"])(keys, _batch())["image"]
  coins = np.asarray(jax.vmap(jax.random.bernoulli, (0, None))(keys, 0.5))
  for i in range(6):
    np.testing.assert_array_equal(out[i], IMAGES[i, :, ::-1] if coins[i] else IMAGES[i])
  always = tfds_jax.random_flip(probability=1.0)(keys, _batch())["image"]
  never = tfds_jax.random_flip(probability=0.0)(keys, _batch())["image"]
  np.testing.assert_array_equal(always, IMAGES[:, :, ::-1])
  np.testing.assert_array_equal(never, IMAGES)
  vertical = tfds_jax.random_flip(axis=0, probability=1.0)(keys, _batch())["image"]
  np.testing.assert_array_equal(vertical, IMAGES[:, ::-1])


def test_random_flip_moves_image_and_mask_together():
  batch = {"image": IMAGES, "mask": IMAGES[..., :1]}
  out = tfds_jax.random_flip(["image", "mask"])(_keys(), batch)
  np.testing.assert_array_equal(out["image"][..., :1], out["mask"])


@given(padding=st.integers(0, 3), seed=st.integers(0, 2**32 - 1))
def test_random_crop_is_a_window_of_the_padded_image(padding, seed):
  out = np.asarray(tfds_jax.random_crop(padding=padding)(_keys(seed=seed), _batch())["image"])
  assert out.shape == IMAGES.shape
  padded = np.pad(IMAGES, ((0, 0), (padding, padding), (padding, padding), (0, 0)))
  for i in range(6):
    windows = [(y, x) for y in range(2 * padding + 1) for x in range(2 * padding + 1)
               if np.array_equal(padded[i, y:y + 5, x:x + 7], out[i])]
    assert windows, f"record {i} is not a crop of its padded image"
  if padding == 0:
    np.testing.assert_array_equal(out, IMAGES)


def test_random_crop_to_a_smaller_size_and_errors():
  out = tfds_jax.random_crop(padding=0, size=(3, 4))(_keys(), _batch())["image"]
  assert out.shape == (6, 3, 4, 3)
  with pytest.raises(ValueError, match="Expected a crop of at most 5x7"):
    tfds_jax.random_crop(padding=0, size=(6, 4))(_keys(), _batch())
  with pytest.raises(ValueError, match=r"Expected 'label' of shape \[batch, H, W, C\]"):
    tfds_jax.random_crop("label")(_keys(), _batch())
  with pytest.raises(ValueError, match="Expected padding >= 0"):
    tfds_jax.random_crop(padding=-1)


def test_one_hot():
  out = tfds_jax.one_hot(6)(None, _batch())["label"]
  np.testing.assert_array_equal(out, np.eye(6)[LABELS])
  with pytest.raises(ValueError, match="Expected num_classes to be a positive int"):
    tfds_jax.one_hot(0)
  with pytest.raises(TypeError, match="Expected integer labels in 'image'"):
    tfds_jax.one_hot(3, "image")(None, {"image": IMAGES.astype(np.float32)})


def test_chain_gives_each_stage_its_own_keys_and_accepts_plain_functions():
  flip = tfds_jax.random_flip()
  alone = tfds_jax.chain(flip)(_keys(), _batch())["image"]
  with_more = tfds_jax.chain(flip, tfds_jax.random_crop(padding=2), lambda b: {**b, "label": b["label"] + 1})
  out = with_more(_keys(), _batch())
  np.testing.assert_array_equal(out["label"], LABELS + 1)
  np.testing.assert_array_equal(tfds_jax.chain(flip, tfds_jax.to_float(scale=1.0))(_keys(), _batch())["image"],
                                np.asarray(alone, np.float32))
  # stage 0 of a chain is keyed with fold_in(key, 0), not the raw key
  direct = flip(jax.vmap(jax.random.fold_in, (0, None))(_keys(), 0), _batch())["image"]
  np.testing.assert_array_equal(alone, direct)


def test_user_stages_with_params_and_keys():
  shift = tfds_jax.stage(lambda b, p, *, column: {**b, column: b[column] + p}, params=jnp.int32(10),
                         column="label")
  np.testing.assert_array_equal(shift(None, _batch())["label"], LABELS + 10)
  noise = tfds_jax.stage(lambda keys, b: {**b, "n": jax.vmap(jax.random.normal)(keys)}, random=True)
  n1 = noise(_keys(), _batch())["n"]
  np.testing.assert_array_equal(n1[2:], noise(_keys(size=4, index=2), {"label": LABELS[2:]})["n"])
  # params are leaves: jit passes them in, a new value does not retrace
  traces = []

  @jax.jit
  def apply(stage, batch):
    traces.append(1)
    return stage(None, batch)

  add = lambda b, p: {**b, "label": b["label"] + p}  # noqa: E731
  for p in (1, 2, 3):
    np.testing.assert_array_equal(apply(tfds_jax.stage(add, params=jnp.int32(p)), _batch())["label"], LABELS + p)
  assert len(traces) == 1


def test_stage_errors_are_clear():
  with pytest.raises(TypeError, match="Expected a function of a batch"):
    tfds_jax.stage(3)
  with pytest.raises(TypeError, match="Expected option sizes=.* to be hashable"):
    tfds_jax.stage(lambda b, sizes: b, sizes=[1, 2])
  with pytest.raises(TypeError, match="Expected stage .* to return a dict of arrays"):
    tfds_jax.stage(lambda b: b["label"])(None, _batch())
  with pytest.raises(KeyError, match=r"Expected features \['image'\] for random_flip, got a batch with \['label'\]"):
    tfds_jax.random_flip()(_keys(), {"label": LABELS})
  with pytest.raises(ValueError, match="Expected per-record keys for the random stage random_flip"):
    tfds_jax.random_flip()(None, _batch())


@pytest.mark.parametrize("call, error, match", [
    # Options were silently truncated by int(): padding 2.5 padded 2, axis 1.5 flipped axis 1.
    (lambda: tfds_jax.random_crop(padding=2.5), TypeError, "Expected random_crop's padding to be an int, got float 2.5"),
    (lambda: tfds_jax.random_crop(size=(4.5, 4)), TypeError, "Expected each of random_crop's size to be an int, got float 4.5"),
    (lambda: tfds_jax.random_crop(size=(0, 4)), ValueError, r"Expected size=\(height, width\) of positive ints, got \(0, 4\)"),
    (lambda: tfds_jax.random_flip(axis=1.5), TypeError, "Expected random_flip's axis to be an int, got float 1.5"),
    # An integer dtype turned every pixel scaled by 1/255 into 0.
    (lambda: tfds_jax.to_float(dtype="int32"), TypeError, "Expected a floating dtype for to_float, got int32"),
    (lambda: tfds_jax.one_hot(True), ValueError, "Expected num_classes to be a positive int, got True"),
    # record_keys: a ZeroDivisionError for 0 records; positions past the next epoch got other epochs' keys.
    (lambda: tfds_jax.record_keys(0, 0, 0, 4, 0), ValueError, r"Expected num_records in \[1, 2\*\*31 - 1\], got 0"),
    (lambda: tfds_jax.record_keys(0, 0, 0, 250, 100), ValueError, r"Expected 1 <= size <= 100 \(the number of records\), got 250"),
    (lambda: tfds_jax.record_keys(0, 0, 0, 4.0, 100), TypeError, "Expected record_keys's size to be an int, got float 4.0"),
])
def test_stage_options_are_never_truncated_or_out_of_range(call, error, match):
  with pytest.raises(error, match=match):
    call()
  assert tfds_jax.random_crop(padding=np.int64(2), size=(np.int32(4), 4)).options  # numpy ints are fine
