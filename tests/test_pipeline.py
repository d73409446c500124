"""Pipelines: the source invariants hold after the stages; augmentation is per record and position."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import tfds_jax
from tfds_jax import testing

N = 37
RNG = np.random.default_rng(1)
DATA = {"image": RNG.integers(0, 256, (N, 6, 6, 3)).astype(np.uint8), "label": np.arange(N) % 5}
SOURCE = tfds_jax.from_arrays(DATA)


def _stages():
  return (tfds_jax.random_crop(padding=2), tfds_jax.random_flip(), tfds_jax.to_float(),
          tfds_jax.one_hot(5))


def _pipe(batch_size, shuffle=True, source=SOURCE):
  return tfds_jax.pipeline(source, *_stages(), batch_size=batch_size, shuffle=shuffle)


def _equal(a, b):
  assert a.keys() == b.keys()
  for k in a:
    np.testing.assert_array_equal(np.asarray(a[k]), np.asarray(b[k]), err_msg=k)


def _run(pipe, state, steps):
  out = []
  for _ in range(steps):
    batch, state = tfds_jax.next_batch(pipe, state)
    out.append(batch)
  return out, state


def _cat(batches):
  return {k: np.concatenate([np.asarray(b[k]) for b in batches]) for k in batches[0]}


@settings(max_examples=12)
@given(seed=st.integers(0, 2**32 - 1), batch_size=st.integers(1, N), steps=st.integers(1, 6),
       shuffle=st.booleans())
def test_k_next_batches_equal_batch_at(seed, batch_size, steps, shuffle):
  pipe = _pipe(batch_size, shuffle)
  batches, state = _run(pipe, tfds_jax.init(pipe, seed=seed), steps)
  for k, batch in enumerate(batches):
    _equal(batch, tfds_jax.batch_at(pipe, k * batch_size, seed=seed))
  assert (int(state.epoch), int(state.index)) == divmod(steps * batch_size, N)


@settings(max_examples=10)
@given(batch_size=st.integers(1, N // 2), data=st.data())
def test_augmentation_does_not_depend_on_the_batch_size(batch_size, data):
  pipe = _pipe(batch_size)
  state = data.draw(testing.states(pipe, max_epoch=2))  # any position, any seed
  testing.assert_batch_size_invariant(pipe, state, [batch_size, 2 * batch_size], num_positions=4 * batch_size)


def test_stages_see_the_raw_records_of_the_source_order():
  pipe = tfds_jax.pipeline(SOURCE, tfds_jax.to_float(scale=1.0), batch_size=8, shuffle=True)
  state = tfds_jax.init(pipe, seed=9)
  raw_state = tfds_jax.init(SOURCE, seed=9, shuffle=True)
  for _ in range(7):
    batch, state = tfds_jax.next_batch(pipe, state)
    raw, raw_state = tfds_jax.next_batch(SOURCE, raw_state, 8)
    np.testing.assert_array_equal(batch["image"], np.asarray(raw["image"], np.float32))
    assert (int(state.epoch), int(state.index)) == (int(raw_state.epoch), int(raw_state.index))


def test_unshuffled_pipeline_is_sequential_but_still_augments_by_seed():
  pipe = _pipe(N, shuffle=False)
  a = tfds_jax.batch_at(pipe, 0, seed=1)
  b = tfds_jax.batch_at(pipe, 0, seed=2)
  np.testing.assert_array_equal(np.argmax(a["label"], -1), DATA["label"])
  assert not np.array_equal(a["image"], b["image"])
  second_epoch = tfds_jax.batch_at(pipe, N, seed=1)
  assert not np.array_equal(a["image"], second_epoch["image"])  # new epoch, new augmentation


def test_jit_eager_and_vmap_agree_and_trace_once():
  pipe = _pipe(8)

  @jax.jit
  @chex.assert_max_traces(n=1)
  def three(pipe, state):
    def body(state, _):
      batch, state = tfds_jax.next_batch(pipe, state)
      return state, batch
    return jax.lax.scan(body, state, length=3)

  for k in range(2):
    _, batches = three(pipe, tfds_jax.init(pipe, seed=k))
    stepped, _ = _run(pipe, tfds_jax.init(pipe, seed=k), 3)
    for step in range(3):
      _equal({f: batches[f][step] for f in batches}, stepped[step])
  state = tfds_jax.init(pipe, seed=0)
  testing.assert_jit_equals_eager(pipe, state, 3)
  testing.assert_vmap_equals_loop(pipe, state, 3, seeds=range(4))


def test_checkpoint_resumes_exactly():
  pipe = _pipe(10)
  state = tfds_jax.init(pipe, seed=123)
  testing.assert_resumes(pipe, state, 9, restore_at=5)
  saved = tfds_jax.state_to_dict(pipe, state)
  with pytest.raises(ValueError, match="Expected a checkpoint for 20 records"):
    tfds_jax.state_from_dict(_pipe(10, source=tfds_jax.from_arrays({k: v[:20] for k, v in DATA.items()})), saved)


def test_element_spec_is_after_the_stages_and_params_are_leaves():
  pipe = _pipe(4)
  spec = tfds_jax.element_spec(pipe)
  assert spec == {"image": jax.ShapeDtypeStruct((6, 6, 3), jnp.float32),
                  "label": jax.ShapeDtypeStruct((5,), jnp.float32)}
  stats = tfds_jax.compute_statistics(SOURCE)
  normed = tfds_jax.pipeline(SOURCE, tfds_jax.normalize(stats), batch_size=4)
  leaves = jax.tree.leaves(normed)
  assert any(leaf is stats.mean["image"] or np.array_equal(leaf, stats.mean["image"]) for leaf in leaves)
  assert sum(x.size for x in leaves) == sum(v.size for v in DATA.values()) + 2 * 3


def test_pipeline_errors_are_clear():
  pipe = _pipe(4)
  with pytest.raises(ValueError, match=r"Expected batch_size=4 \(the pipeline's batch size\) or None, got 5"):
    tfds_jax.next_batch(pipe, tfds_jax.init(pipe), 5)
  with pytest.raises(ValueError, match=r"Expected shuffle=True \(set when the pipeline was made\)"):
    tfds_jax.init(pipe, shuffle=False)
  with pytest.raises(ValueError, match=r"Expected a state made by init\(pipeline, seed=...\)"):
    tfds_jax.next_batch(pipe, tfds_jax.init(SOURCE))
  with pytest.raises(KeyError, match="Expected features"):
    tfds_jax.pipeline(SOURCE, tfds_jax.random_flip("mask"), batch_size=4)
  with pytest.raises(ValueError, match=r"Expected 1 <= batch_size <= 37"):
    _pipe(38)
  with pytest.raises(TypeError, match="Expected a Source or Stream, got a Pipeline"):
    tfds_jax.pipeline(pipe, batch_size=4)


def test_stages_that_break_the_batch_are_refused():
  first = lambda b: {k: v[:1] for k, v in b.items()}  # noqa: E731  # fine for one record, not for 4
  with pytest.raises(ValueError, match=r"Expected stage <lambda> to keep the batch size 4 in every feature, got leading shapes \{'image': \(1,\), 'label': \(1,\)\}"):
    tfds_jax.pipeline(SOURCE, first, batch_size=4)
  halve = lambda b: {k: v[: v.shape[0] // 2] for k, v in b.items()}  # noqa: E731
  with pytest.raises(ValueError, match=r"to keep the batch size 1 in every feature, got leading shapes \{'image': \(0,\)"):
    tfds_jax.pipeline(SOURCE, halve, batch_size=4)
  with pytest.raises(ValueError, match=r"Expected stage <lambda> to return a non-empty dict of arrays, got \{\}"):
    tfds_jax.pipeline(SOURCE, lambda b: {}, batch_size=4)
  with pytest.raises(TypeError, match=r"Expected stage <lambda> to return a dict of arrays, got an array of shape \(1,\)"):
    tfds_jax.pipeline(SOURCE, lambda b: b["label"], batch_size=4)


@pytest.mark.parametrize("mixing", [
    lambda b: {**b, "image": b["image"] - b["image"].mean(axis=0)},  # centred by the batch mean
    lambda b: {**b, "image": b["image"] / b["image"].max()},  # scaled by the batch maximum
    lambda b: {**b, "label": jnp.roll(b["label"], 1)},  # records swapped
])
def test_stages_that_mix_records_are_refused(mixing):
  with pytest.raises(ValueError, match="Expected stages that treat records independently"):
    tfds_jax.pipeline(SOURCE, tfds_jax.to_float(), mixing, batch_size=4)


def test_one_random_number_for_the_whole_batch_is_mixing():
  def shared_noise(keys, batch):
    return {**batch, "image": batch["image"] + jax.random.normal(keys[0], batch["image"].shape)}
  with pytest.raises(ValueError, match="Expected stages that treat records independently"):
    tfds_jax.pipeline(SOURCE, tfds_jax.to_float(), tfds_jax.stage(shared_noise, random=True), batch_size=4)
  per_record = tfds_jax.stage(lambda keys, b: {**b, "image": b["image"] + jax.vmap(
      lambda k, x: jax.random.normal(k, x.shape))(keys, b["image"])}, random=True)
  tfds_jax.pipeline(SOURCE, tfds_jax.to_float(), per_record, batch_size=4)  # independent: accepted
  # The documented limit: with one record per batch there is nothing to mix, and nothing is checked.
  tfds_jax.pipeline(SOURCE, tfds_jax.to_float(), tfds_jax.stage(shared_noise, random=True), batch_size=1)


def test_one_hot_must_cover_the_labels_where_they_are_known():
  with pytest.raises(ValueError, match=r"Expected one_hot\(3\) to cover the labels of 'label' in the source \(values: \[0, 4\]\), got num_classes=3; pass one_hot\(5\)"):
    tfds_jax.pipeline(SOURCE, tfds_jax.one_hot(3), batch_size=4)
  negative = tfds_jax.from_arrays({"label": np.array([-1, 0, 1])}, name="neg", split="train")
  with pytest.raises(ValueError, match=r"labels of 'label' in neg\[train\] \(values: \[-1, 1\]\)"):
    tfds_jax.pipeline(negative, tfds_jax.one_hot(2), batch_size=1)
  # A stage of the user's own before it may remap the labels: not checked.
  tfds_jax.pipeline(SOURCE, lambda b: {**b, "label": b["label"] % 3}, tfds_jax.one_hot(3), batch_size=4)
  tfds_jax.pipeline(SOURCE, tfds_jax.random_flip(), tfds_jax.one_hot(5), batch_size=4)


def test_built_in_parameters_are_checked_against_the_data():
  with pytest.raises(ValueError, match=r"Expected axis in \[-3, 3\) for random_flip of 'image' \(records of shape \(6, 6, 3\)\), got 7"):
    tfds_jax.pipeline(SOURCE, tfds_jax.random_flip(axis=7), batch_size=4)
  for p in (2.0, -0.1, float("nan")):
    with pytest.raises(ValueError, match="Expected probability in \\[0, 1\\] for random_flip"):
      tfds_jax.random_flip(probability=p)
  gray = tfds_jax.from_arrays({"image": np.zeros((8, 4, 4, 1), np.uint8)})
  with pytest.raises(ValueError, match=r"Expected normalize statistics for 'image' that broadcast to its record shape \(4, 4, 1\) .* got a mean of shape \(3,\)"):
    tfds_jax.pipeline(gray, tfds_jax.normalize(mean=np.zeros(3), std=np.ones(3)), batch_size=4)
  other = tfds_jax.compute_statistics(tfds_jax.from_arrays({"x": np.zeros((4, 3))}))
  with pytest.raises(KeyError, match=r"Expected statistics \(mean\) of feature 'image' for normalize, got statistics of \['x'\]"):
    tfds_jax.normalize(other)


def test_invalid_states_of_a_pipeline():
  pipe = _pipe(4)
  with pytest.raises(ValueError, match="0 <= index < 37 .* got epoch 0, index 40"):
    tfds_jax.next_batch(pipe, tfds_jax.SourceState(np.int32(0), np.int32(40), np.uint32(1)))
  with pytest.raises(TypeError, match="Expected a SourceState, got dict"):
    tfds_jax.next_batch(pipe, {"epoch": 0})
  wrapped = tfds_jax.SourceState(jnp.int32(1), jnp.int32(40), jnp.uint32(1))  # traced: index mod 37
  got, after = jax.jit(tfds_jax.next_batch)(pipe, wrapped)
  want, want_after = tfds_jax.next_batch(pipe, wrapped._replace(index=jnp.int32(3)))
  _equal(got, want)
  assert (int(after.epoch), int(after.index)) == (int(want_after.epoch), int(want_after.index)) == (1, 7)


@pytest.fixture(scope="module")
def streamed(toy_dirs):
  data_dir = toy_dirs["array_record"]
  keys = ["image", "label"]
  eager = tfds_jax.load("toy_images", "train", data_dir=data_dir, include_keys=keys, cache=False)
  with tfds_jax.stream("toy_images", "train", data_dir=data_dir, include_keys=keys) as s:
    yield eager, s


@settings(max_examples=5)
@given(seed=st.integers(0, 2**32 - 1), batch_size=st.integers(1, 40), steps=st.integers(1, 4))
def test_pipeline_over_a_stream_equals_pipeline_over_the_eager_source(streamed, seed, batch_size, steps):
  eager, stream = streamed
  stages = (tfds_jax.random_crop(padding=1), tfds_jax.random_flip(), tfds_jax.one_hot(3))
  on_eager = tfds_jax.pipeline(eager, *stages, batch_size=batch_size, shuffle=True)
  on_stream = tfds_jax.pipeline(stream, *stages, batch_size=batch_size, shuffle=True)
  assert tfds_jax.element_spec(on_eager) == tfds_jax.element_spec(on_stream)
  a, a_state = _run(on_eager, tfds_jax.init(on_eager, seed=seed), steps)
  b, b_state = _run(on_stream, tfds_jax.init(on_stream, seed=seed), steps)
  _equal(_cat(a), _cat(b))
  assert (int(a_state.epoch), int(a_state.index)) == (int(b_state.epoch), int(b_state.index))
  _equal(tfds_jax.batch_at(on_stream, 3 * batch_size, seed=seed),
         tfds_jax.batch_at(on_eager, 3 * batch_size, seed=seed))


def test_one_hot_over_a_stream_is_checked_against_its_class_label(streamed):
  _, stream = streamed
  with pytest.raises(ValueError, match=r"Expected one_hot\(2\) to cover the labels of 'label' in toy_images\[train\] \(its ClassLabel's range: \[0, 2\]\)"):
    tfds_jax.pipeline(stream, tfds_jax.one_hot(2), batch_size=4)
