"""Source, init, next_batch, batch_at: exact epochs, Grain order, jit = vmap = eager."""

import contextlib
import faulthandler
import functools

import chex
import grain
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import tfds_jax
from tfds_jax import batch_at, from_arrays, init, next_batch
from tfds_jax import testing

seeds = st.integers(0, 2**32 - 1)


def _source(n):
  # "x" holds each record's own index, so batches show which records were read.
  return from_arrays({"x": np.arange(n, dtype=np.int32), "img": np.arange(n * 6, dtype=np.uint8).reshape(n, 2, 3)})


@functools.partial(jax.jit, static_argnames=("batch_size", "steps"))
def _scan_batches(source, state, batch_size, steps):
  def step(state, _):
    batch, state = next_batch(source, state, batch_size)
    return state, batch["x"]
  state, xs = jax.lax.scan(step, state, None, length=steps)
  return xs, state


@given(n=st.integers(1, 200), seed=seeds, epochs=st.integers(1, 3), data=st.data())
def test_shuffled_order_equals_grain_mapdataset(n, seed, epochs, data):
  batch_size = data.draw(st.integers(1, n))
  steps = -(-epochs * n // batch_size)
  xs, _ = _scan_batches(_source(n), init(_source(n), seed=seed, shuffle=True), batch_size, steps)
  ours = np.asarray(xs).reshape(-1)
  ds = grain.MapDataset.source(list(range(n))).shuffle(seed=seed)
  np.testing.assert_array_equal(ours, [ds[i] for i in range(steps * batch_size)])


@given(n=st.integers(1, 300), data=st.data())
def test_every_epoch_visits_each_record_once(n, data):
  source = _source(n)
  state = data.draw(testing.states(source))  # shuffled or not, from any position
  testing.assert_visits_every_record(source, state, data.draw(testing.batch_sizes(source)), num_epochs=3)
  if state.seed is None:  # and in order
    np.testing.assert_array_equal(np.asarray(batch_at(source, int(state.index), n)["x"]),
                                  (int(state.index) + np.arange(n)) % n)


@given(n=st.integers(1, 300), seed=seeds, shuffle=st.booleans(), k=st.integers(0, 40), data=st.data())
def test_k_next_batches_equal_batch_at(n, seed, shuffle, k, data):
  batch_size = data.draw(st.integers(1, n))
  source = _source(n)
  state = init(source, seed=seed, shuffle=shuffle)
  if k:
    _, state = _scan_batches(source, state, batch_size, k)
  got, _ = next_batch(source, state, batch_size)
  initial = init(source, seed=seed, shuffle=shuffle)
  want = batch_at(source.data, k * batch_size, batch_size, initial.seed)
  chex.assert_trees_all_equal(got, want)
  # batch_at also takes a traced start and the seed itself (as a uint32 array: a jit
  # argument that is a Python int must fit int32 with x64 disabled).
  traced = jax.jit(batch_at, static_argnums=2)(source, jnp.int32(k * batch_size), batch_size,
                                               np.uint32(seed) if shuffle else None)
  chex.assert_trees_all_equal(traced, want)


@given(n=st.integers(2, 100), seed=seeds, data=st.data())
def test_batch_at_equals_gather_through_full_permutation(n, seed, data):
  size = data.draw(st.integers(1, n))
  start = data.draw(st.integers(0, 5 * n))
  source = _source(n)
  perms = [np.asarray(tfds_jax.index_shuffle(jnp.arange(n), (seed + e) % 2**32, n - 1)) for e in range(7)]
  order = np.concatenate(perms)
  want = order[start:start + size]
  np.testing.assert_array_equal(np.asarray(batch_at(source, start, size, seed)["x"]), want)
  np.testing.assert_array_equal(np.asarray(batch_at(source, start, size, seed)["img"]), np.asarray(source.data["img"])[want])


def test_batch_crossing_epoch_boundary_takes_each_epochs_order():
  n, seed = 10, 7
  source = _source(n)
  state = init(source, seed=seed, shuffle=True)
  _, state = next_batch(source, state, 8)
  batch, state = next_batch(source, state, 8)
  e0 = np.asarray(tfds_jax.index_shuffle(jnp.arange(n), seed, n - 1))
  e1 = np.asarray(tfds_jax.index_shuffle(jnp.arange(n), seed + 1, n - 1))
  np.testing.assert_array_equal(np.asarray(batch["x"]), np.concatenate([e0[8:], e1[:6]]))
  assert (int(state.epoch), int(state.index)) == (1, 6)


def test_large_python_start_and_seed_wraparound():
  n = 13
  source = _source(n)
  start = 10**12 * n + 5  # Far past 2**31: the divmod happens on Python ints.
  epoch = (10**12) % 2**32
  got = np.asarray(batch_at(source, start, 4, 2**32 - 1)["x"])
  want = np.asarray(tfds_jax.index_shuffle(jnp.arange(5, 9), (2**32 - 1 + epoch) % 2**32, n - 1))
  np.testing.assert_array_equal(got, want)


def test_next_batch_traces_once_in_fori_loop_and_scan():
  source, state = _source(50), init(_source(50), seed=3, shuffle=True)

  @jax.jit
  @chex.assert_max_traces(n=1)
  def epoch_sum(source, state):
    def body(_, carry):
      total, state = carry
      batch, state = next_batch(source, state, 16)
      return total + batch["x"].sum(), state
    return jax.lax.fori_loop(0, 25, body, (jnp.int32(0), state))

  total, end = epoch_sum(source, state)
  total2, _ = epoch_sum(source, end)  # New state values: no retrace.
  assert int(end.epoch) == 8 and int(end.index) == 0  # 25 * 16 = 8 * 50
  assert int(total) == 8 * sum(range(50))
  assert int(total2) == 8 * sum(range(50))
  chex.clear_trace_counter()


def test_jit_eager_vmap_agree_for_next_batch():
  n = 61_000  # Near the 2**16 block, so the op-by-op loop is short.
  source = from_arrays({"x": np.arange(n, dtype=np.int32)})
  state = init(source, seed=11, shuffle=True)
  state = state._replace(index=jnp.int32(n - 5))
  with jax.disable_jit():
    eager, eager_state = next_batch(source, state, 9)
  jitted, jit_state = next_batch(source, state, 9)
  chex.assert_trees_all_equal((eager, eager_state), (jitted, jit_state))
  states = jax.tree.map(lambda *xs: jnp.stack(xs), state, state._replace(index=jnp.int32(3)))
  vb, vs = jax.vmap(next_batch, in_axes=(None, 0, None))(source, states, 9)
  chex.assert_trees_all_equal(jax.tree.map(lambda x: x[0], (vb, vs)), (jitted, jit_state))


def test_vmap_over_seeds_and_keys_gives_independent_orders():
  n = 64
  source = _source(n)
  seeds_ = jnp.arange(5, dtype=jnp.uint32)
  orders = jax.vmap(lambda s: batch_at(source, 0, n, s)["x"])(seeds_)
  for s in range(5):
    np.testing.assert_array_equal(np.asarray(orders[s]), np.asarray(batch_at(source, 0, n, s)["x"]))
    np.testing.assert_array_equal(np.sort(np.asarray(orders[s])), np.arange(n))
  assert len({tuple(o) for o in np.asarray(orders).tolist()}) == 5
  keys = jax.random.split(jax.random.key(0), 4)
  states = jax.vmap(lambda k: init(source, seed=k, shuffle=True))(keys)
  batches, _ = jax.vmap(next_batch, in_axes=(None, 0, None))(source, states, n)
  assert len({tuple(o) for o in np.asarray(batches["x"]).tolist()}) == 4
  one = init(source, seed=keys[2], shuffle=True)
  np.testing.assert_array_equal(np.asarray(next_batch(source, one, n)[0]["x"]), np.asarray(batches["x"][2]))
  # vmap over start positions too.
  starts = jnp.array([0, 10, 200])
  per_start = jax.vmap(lambda p: batch_at(source, p, 8, 5)["x"])(starts)
  for i, p in enumerate([0, 10, 200]):
    np.testing.assert_array_equal(np.asarray(per_start[i]), np.asarray(batch_at(source, p, 8, 5)["x"]))


def test_init_seed_forms():
  source = _source(5)
  assert init(source).seed is None
  assert init(source, seed=9).seed is None  # Not shuffled: no seed.
  assert int(init(source, seed=2**32 - 1, shuffle=True).seed) == 2**32 - 1
  raw = jax.random.PRNGKey(3)
  typed = jax.random.wrap_key_data(raw)
  assert int(init(source, seed=raw, shuffle=True).seed) == int(init(source, seed=typed, shuffle=True).seed)
  assert init(source, seed=jnp.int32(4), shuffle=True).seed.dtype == jnp.uint32
  with pytest.raises(ValueError, match=r"Expected a seed in \[0, 2\*\*32\), got -1"):
    init(source, seed=-1, shuffle=True)
  with pytest.raises(ValueError, match="Expected a single JAX key, got a key array of shape"):
    init(source, seed=jax.random.split(typed, 2), shuffle=True)
  with pytest.raises(ValueError, match="got an array of dtype float32"):
    init(source, seed=jnp.float32(1.0), shuffle=True)


def test_from_arrays_and_element_spec():
  source = from_arrays({"image": np.zeros((7, 4, 4, 1), np.uint8), "label": [0, 1, 2, 3, 4, 5, 6]})
  assert source.num_records == 7
  assert isinstance(source.data["label"], jax.Array)
  assert tfds_jax.element_spec(source) == {
      "image": jax.ShapeDtypeStruct((4, 4, 1), jnp.uint8),
      "label": jax.ShapeDtypeStruct((), source.data["label"].dtype),
  }
  leaves, treedef = jax.tree_util.tree_flatten(source)
  assert len(leaves) == 2
  assert jax.tree_util.tree_unflatten(treedef, leaves).num_records == 7
  assert "num_records=7" in repr(source)


def test_from_arrays_places_on_device():
  device = jax.devices()[0]
  source = from_arrays({"x": np.arange(3)}, device=device)
  assert source.data["x"].devices() == {device}


@pytest.mark.parametrize(
    "arrays, error, match",
    [
        ({}, ValueError, "Expected a non-empty dict of feature name -> array, got {}"),
        ({"a": np.zeros(3), "b": np.zeros(4)}, ValueError, r"same number of records.*got \{'a': 3, 'b': 4\}"),
        ({"a": np.float32(1)}, ValueError, "Expected feature 'a' to have a leading record axis, got a scalar"),
        ({"a": np.array(["x", "y"])}, TypeError, "Expected a numeric or bool array for feature 'a', got dtype <U1"),
        ({"a": np.zeros((0, 2))}, ValueError, "Expected between 1 and 2\\*\\*31 - 1 records, got 0"),
        ({1: np.zeros(3)}, TypeError, "Expected feature names to be str, got 1"),
    ],
)
def test_from_arrays_errors(arrays, error, match):
  with pytest.raises(error, match=match):
    from_arrays(arrays)


def test_batch_size_errors():
  source = _source(10)
  state = init(source)
  with pytest.raises(ValueError, match=r"Expected 1 <= batch_size <= 10 \(the number of records\), got 11"):
    next_batch(source, state, 11)
  for bad in (0, -1):  # not "use a smaller batch"
    with pytest.raises(ValueError, match=f"Expected size >= 1, got {bad}; pass a positive number"):
      batch_at(source, 0, bad)
    with pytest.raises(ValueError, match=f"Expected batch_size >= 1, got {bad}; pass a positive number"):
      next_batch(source, state, bad)
  with pytest.raises(TypeError, match="Expected size to be a static Python int"):
    jax.jit(batch_at)(source, 0, 3)
  with pytest.raises(ValueError, match="Expected start >= 0, got -1"):
    batch_at(source, -1, 3)


@contextlib.contextmanager
def _deadline(seconds):
  """Ends the whole process with a traceback if the block runs past ``seconds``: a hang
  fails loudly instead of stalling the suite."""
  faulthandler.dump_traceback_later(seconds, exit=True)
  try:
    yield
  finally:
    faulthandler.cancel_dump_traceback_later()


_jit_next = jax.jit(next_batch, static_argnames="batch_size")


@given(n=st.integers(1, 300), epoch=st.integers(-2**31, 2**31 - 1), index=st.integers(-2**31, 2**31 - 1),
       seed=seeds, shuffle=st.booleans(), data=st.data())
def test_any_integer_state_under_jit_terminates_and_reads_only_records_of_the_source(
    n, epoch, index, seed, shuffle, data):
  batch_size = data.draw(st.integers(1, n))
  source = _source(n)  # x is each record's own index
  state = tfds_jax.SourceState(jnp.int32(epoch), jnp.int32(index), jnp.uint32(seed) if shuffle else None)
  with _deadline(120):
    batch, after = _jit_next(source, state, batch_size=batch_size)
    x = np.asarray(batch["x"])
  assert ((0 <= x) & (x < n)).all()
  np.testing.assert_array_equal(np.asarray(batch["img"]), np.asarray(source.data["img"])[x])
  # The documented result: the state read as (epoch, index mod n), then advanced.
  valid = state._replace(index=jnp.int32(index % n))
  want, want_after = _jit_next(source, valid, batch_size=batch_size)
  chex.assert_trees_all_equal((batch, after), (want, want_after))
  assert 0 <= int(after.index) < n


def test_the_states_that_hung_or_read_past_the_end_now_terminate_in_range():
  source = _source(100)
  hung = tfds_jax.SourceState(jnp.int32(0), jnp.int32(471), jnp.uint32(2))
  with _deadline(120):
    batch, after = _jit_next(source, hung, batch_size=8)
  np.testing.assert_array_equal(np.asarray(batch["x"]), np.asarray(batch_at(source, 71, 8, 2)["x"]))
  assert (int(after.epoch), int(after.index)) == (0, 79)
  past_end = tfds_jax.SourceState(jnp.int32(0), jnp.int32(1200), None)  # a train state on a small split
  batch, after = _jit_next(source, past_end, batch_size=8)
  np.testing.assert_array_equal(np.asarray(batch["x"]), np.arange(0, 8))  # 1200 mod 100 = 0
  negative = tfds_jax.SourceState(jnp.int32(0), jnp.int32(-5), None)
  batch, _ = _jit_next(source, negative, batch_size=8)
  np.testing.assert_array_equal(np.asarray(batch["x"]), [95, 96, 97, 98, 99, 0, 1, 2])


def test_concrete_invalid_states_are_errors():
  source, other = _source(20), _source(50)
  state = init(source)
  for bad, match in [
      (state._replace(index=jnp.int32(20)), r"0 <= index < 20 \(its number of records\), got epoch 0, index 20"),
      (state._replace(index=np.int32(-5)), "got epoch 0, index -5"),
      (state._replace(epoch=jnp.int32(-1)), "epoch >= 0 .* got epoch -1"),
      (tfds_jax.SourceState(0, 25, None), "got epoch 0, index 25; it belongs to another dataset or split"),
  ]:
    with pytest.raises(ValueError, match=match):
      next_batch(source, bad, 4)
  # A state of a larger split (handed out by next_batch, so known valid for 50 records).
  _, train_state = next_batch(other, init(other), 32)
  with pytest.raises(ValueError, match="got epoch 0, index 32"):
    next_batch(source, train_state, 4)
  for bad, match in [
      (state._replace(index=np.float32(3.7)), "state's index to be an integer scalar, got dtype float32"),
      (state._replace(index=3.7), "state.s index to be an integer scalar, got float 3.7"),
      (state._replace(epoch=jnp.zeros(2, jnp.int32)), r"state's epoch to be an integer scalar, got dtype int32 and shape \(2,\)"),
      (state._replace(seed=np.float32(1)), "state's seed to be an integer scalar"),
      ({"epoch": 0, "index": 0, "seed": None}, "Expected a SourceState, got dict"),
      ((0, 0, None), "Expected a SourceState, got tuple"),
  ]:
    with pytest.raises(TypeError, match=match):
      next_batch(source, bad, 4)
  with pytest.raises(TypeError, match="state's index to be an integer scalar, got dtype float32"):
    jax.jit(next_batch, static_argnums=2)(source, state._replace(index=jnp.float32(1)), 4)  # dtypes are static


def test_hand_made_states_out_of_int32_or_seed_range_are_errors():
  source = _source(20)
  for bad, match in [
      (tfds_jax.SourceState(2**40, 3, None), r"Expected the state's epoch below 2\*\*31 \(an int32\), got 1099511627776"),
      (tfds_jax.SourceState(0, 3, 2**40), r"Expected the state's seed in \[0, 2\*\*32\), got 1099511627776"),
      (tfds_jax.SourceState(0, 3, -1), r"state's seed in \[0, 2\*\*32\), got -1"),
      (tfds_jax.SourceState(jnp.int32(0), jnp.int32(3), jnp.int32(-1)), r"got -1; make states with tfds_jax.init"),
  ]:
    with pytest.raises(ValueError, match=match):  # was JAX's OverflowError, or silently seed 2**32 - 1
      next_batch(source, bad, 4)
  want = next_batch(source, tfds_jax.SourceState(0, 3, np.uint32(2**32 - 1)), 4)[0]["x"]
  np.testing.assert_array_equal(  # an int seed in range is fine (was JAX's OverflowError above 2**31)
      next_batch(source, tfds_jax.SourceState(0, 3, 2**32 - 1), 4)[0]["x"], want)
  pipe = tfds_jax.pipeline(source, batch_size=4, shuffle=True)
  np.testing.assert_array_equal(next_batch(pipe, tfds_jax.SourceState(0, 3, 2**32 - 1))[0]["x"], want)


def test_a_missing_batch_size_says_to_pass_one():
  source = _source(10)
  for call, what in ((lambda: next_batch(source, init(source)), "batch_size"),
                     (lambda: batch_at(source, 0), "size")):
    with pytest.raises(TypeError, match=rf"Expected {what} \(records per batch\), got None; pass it"):
      call()  # was "got NoneType; mark it static: jax.jit(...)"


def test_arrays_of_different_lengths_are_refused_wherever_they_are_read():
  # A gather past the end of the shorter array would return clamped or arbitrary rows.
  arrays = {"x": np.arange(10), "y": {"z": np.arange(5)}}
  direct = tfds_jax.Source(data=jax.tree.map(jnp.asarray, arrays))
  match = r"Expected every feature to have the same number of records .* got \{'x': 10, \('y', 'z'\): 5\}"
  for call in (lambda: init(arrays), lambda: next_batch(arrays, init(_source(10)), 8),
               lambda: batch_at(direct, 4, 6), lambda: tfds_jax.element_spec(direct),
               lambda: tfds_jax.compute_statistics(arrays, chunk_size=4),
               lambda: tfds_jax.pipeline(direct, batch_size=2)):
    with pytest.raises(ValueError, match=match):
      call()


def test_states_handed_out_are_not_read_back():
  source = _source(20)
  state = init(source)
  _, state = next_batch(source, state, 4)
  assert tfds_jax._source._issued(state, 20) and not tfds_jax._source._issued(state, 21)
  assert not tfds_jax._source._issued(state._replace(index=jnp.int32(3)), 20)
  assert tfds_jax._source.check_state(state, 20) is None  # known valid: no device round trip
  assert tfds_jax._source.check_state(state._replace(index=jnp.int32(3)), 20) == (0, 3)


def test_traced_start_is_split_by_floor_division_and_must_be_an_integer():
  n, seed = 10, 7
  source = _source(n)
  at = jax.jit(batch_at, static_argnums=2)
  got = np.asarray(at(source, jnp.int32(-1), 3, jnp.uint32(seed))["x"])
  last_of_epoch_minus_1 = int(tfds_jax.index_shuffle(n - 1, seed - 1, n - 1))
  np.testing.assert_array_equal(got, [last_of_epoch_minus_1, *np.asarray(batch_at(source, 0, 2, seed)["x"])])
  np.testing.assert_array_equal(np.asarray(at(source, jnp.int32(-1), 3, None)["x"]), [9, 0, 1])
  with pytest.raises(TypeError, match="Expected start to be an integer scalar, got dtype float32"):
    at(source, jnp.float32(3.5), 3, None)
  with pytest.raises(TypeError, match="Expected start to be an integer scalar, got dtype float64"):
    batch_at(source, np.float64(3.5), 3)
  with pytest.raises(ValueError, match="Expected start >= 0, got -1"):
    batch_at(source, jnp.int32(-1), 3)  # concrete: an error
  np.testing.assert_array_equal(np.asarray(batch_at(source, jnp.int32(12), 3)["x"]), [2, 3, 4])


def test_record_indices_checks_concrete_positions_and_wraps_traced_ones():
  with pytest.raises(ValueError, match="Expected a state of 10 records .* got epoch 0, index 15"):
    tfds_jax.record_indices(10, 0, 15, 3, None)
  with pytest.raises(ValueError, match="got epoch -1, index 0"):
    tfds_jax.record_indices(10, -1, 0, 3, None)
  with pytest.raises(ValueError, match="Expected num_records to be an int in"):
    tfds_jax.record_indices(0, 0, 0, 1, None)
  with pytest.raises(TypeError, match="state's index to be an integer scalar"):
    tfds_jax.record_indices(10, 0, 1.5, 3, None)
  traced = jax.jit(lambda i: tfds_jax.record_indices(10, 0, i, 3, None))(jnp.int32(15))
  np.testing.assert_array_equal(np.asarray(traced), [5, 6, 7])


def test_bad_arguments_get_clear_errors():
  source = _source(10)
  with pytest.raises(TypeError, match=r"Expected an int seed in \[0, 2\*\*32\) or a JAX key, got str '42'"):
    init(source, seed="42", shuffle=True)
  with pytest.raises(TypeError, match="got str '42'"):
    init(source, seed="42")  # checked even when not shuffling
  with pytest.raises(TypeError, match="got float 1.5"):
    init(source, seed=1.5, shuffle=True)
  bare = np.zeros((10, 3))
  for call in (lambda: next_batch(bare, init(source), 2), lambda: batch_at(bare, 0, 2),
               lambda: init(bare), lambda: tfds_jax.element_spec(bare)):
    with pytest.raises(TypeError, match=r"Expected a Source, Pipeline or Stream .* got ndarray shape \(10, 3\)"):
      call()
  with pytest.raises(TypeError, match="got int 42"):
    tfds_jax.element_spec(42)
  with pytest.raises(TypeError, match="Expected device to be None, a jax.Device or a jax.sharding.Sharding, got str 'cpu'"):
    from_arrays({"x": np.arange(3)}, device="cpu")
  with pytest.raises(TypeError, match="Expected batch_size to be a static Python int, got bool"):
    next_batch(source, init(source), True)


def test_from_arrays_refuses_integers_that_do_not_fit_and_ragged_lists():
  assert not jax.config.jax_enable_x64
  with pytest.raises(ValueError, match=r"Expected feature 'x' of from_arrays to fit int32 .* got values in \[0, 1099511627777\]"):
    from_arrays({"x": np.array([2**40 + 1, 0], np.int64)})
  with pytest.raises(ValueError, match=r"feature 'big' of mine\[train\] to fit uint32"):
    from_arrays({"big": np.array([2**33], np.uint64)}, name="mine", split="train")
  fits = from_arrays({"x": np.array([2**31 - 1, -2**31], np.int64)})
  assert fits.data["x"].dtype == jnp.int32 and fits.data["x"].tolist() == [2**31 - 1, -2**31]
  with pytest.raises(ValueError, match="Expected feature 'x' to be an array .* got ragged list"):
    from_arrays({"x": [[1, 2], [3]]})
