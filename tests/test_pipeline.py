"""Pipelines: the source invariants hold after the stages; augmentation is per record and position."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import tfds_jax

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
@given(seed=st.integers(0, 2**32 - 1), batch_size=st.integers(1, N // 2), steps=st.integers(1, 5))
def test_augmentation_does_not_depend_on_the_batch_size(seed, batch_size, steps):
  small, _ = _run(_pipe(batch_size), tfds_jax.init(_pipe(batch_size), seed=seed), 2 * steps)
  big, _ = _run(_pipe(2 * batch_size), tfds_jax.init(_pipe(2 * batch_size), seed=seed), steps)
  _equal(_cat(small), _cat(big))


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
  seeds = jnp.arange(4, dtype=jnp.uint32)

  @jax.jit
  @chex.assert_max_traces(n=1)
  def three(pipe, state):
    def body(state, _):
      batch, state = tfds_jax.next_batch(pipe, state)
      return state, batch
    return jax.lax.scan(body, state, length=3)

  states = jax.vmap(lambda s: tfds_jax.init(pipe, seed=s))(seeds)
  (_, vmapped) = jax.vmap(three, in_axes=(None, 0))(pipe, states)
  for k in range(4):
    state, batches = three(pipe, tfds_jax.init(pipe, seed=k))
    eager, _ = _run(pipe, tfds_jax.init(pipe, seed=k), 3)
    for step in range(3):
      _equal({f: batches[f][step] for f in batches}, eager[step])
      _equal({f: vmapped[f][k, step] for f in vmapped}, eager[step])


def test_checkpoint_resumes_exactly():
  pipe = _pipe(10)
  state = tfds_jax.init(pipe, seed=123)
  _, state = _run(pipe, state, 5)
  saved = {k: np.asarray(v) for k, v in tfds_jax.state_to_dict(pipe, state).items()}
  expected, _ = _run(pipe, state, 4)
  restored = tfds_jax.state_from_dict(_pipe(10), saved)
  resumed, _ = _run(_pipe(10), restored, 4)
  _equal(_cat(expected), _cat(resumed))
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
