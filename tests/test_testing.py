"""tfds_jax.testing: each assertion passes on the library's stages and drivers and fails,
saying where and how to reproduce, on a purpose-built broken example."""

import itertools
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from jax.sharding import Mesh

import testing_factories
import tfds_jax
from tfds_jax import testing

N = 29
RNG = np.random.default_rng(4)
DATA = {"image": RNG.integers(0, 256, (N, 6, 6, 3)).astype(np.uint8), "label": np.arange(N) % 5}
SOURCE = tfds_jax.from_arrays(DATA)
MESH = Mesh(np.array(jax.devices()[:4]), ("data",))


def _builtin_stages():
  return (tfds_jax.random_crop(padding=2), tfds_jax.random_flip(), tfds_jax.to_float(),
          tfds_jax.one_hot(5))


def _pipe(*stages, batch_size=8, source=SOURCE, shuffle=True):
  """The pipeline, without pipeline()'s own checks (which refuse the broken stages below at once:
  here the assertions must catch them)."""
  return tfds_jax.pipeline(source, *(stages or _builtin_stages()), batch_size=batch_size, shuffle=shuffle,
                           check_stages=False)


def _sum_step(total, batch):
  """An exact checksum of the images (integer arithmetic: no float rounding to differ)."""
  return total + jnp.sum((batch["image"] * 255).astype(jnp.int32))


# Broken on purpose -----------------------------------------------------------------------------

def _batch_keyed(keys, batch):
  """One key for the whole batch (the first record's): depends on the batch size and devices."""
  noise = jax.random.uniform(keys[0], batch["image"].shape)
  return {**batch, "image": batch["image"].astype(jnp.float32) + noise}


def _batch_centred(batch):
  """Subtracts the batch mean: every record depends on the others in its batch."""
  image = batch["image"].astype(jnp.float32)
  return {**batch, "image": image - image.mean(0)}


def _duplicating(batch):
  """Copies each batch's first record over its second: one record twice, another never."""
  rows = jnp.arange(len(batch["label"])).at[1].set(0)
  return jax.tree.map(lambda x: x[rows], batch)


def _new_dict(batch):
  return {"image": batch["image"], "label": batch["label"]}


_COUNTER = itertools.count()


def _counting_step(total, batch):
  """Reads a global counter (at trace time): a new trace, a new result."""
  return total + next(_COUNTER) + jnp.sum(batch["label"])


def _drop_seed(source, saved):
  """A hand-rolled restore that forgets the seed (state_from_dict itself refuses a shuffled
  checkpoint without one)."""
  del source
  return tfds_jax.SourceState(np.int32(saved["epoch"]), np.int32(saved["index"]), None)


# Passing on the built-in stages and drivers ----------------------------------------------------

def test_every_assertion_passes_on_a_source_and_a_train_step():
  state = tfds_jax.init(SOURCE, seed=11, shuffle=True)._replace(epoch=jnp.int32(2), index=jnp.int32(23))
  step = dict(train_step=_sum_step, carry=jnp.int32(0))
  testing.assert_deterministic(SOURCE, state, 4, 8, **step)
  testing.assert_resumes(SOURCE, state, 5, 8, restore_at=2, **step)
  testing.assert_visits_every_record(SOURCE, state, 8)
  testing.assert_jit_equals_eager(SOURCE, state, 3, 8, **step)
  testing.assert_vmap_equals_loop(SOURCE, state, 3, 8, seeds=[0, 5, 2**32 - 1], **step)
  testing.assert_batch_size_invariant(SOURCE, state, [8, 5])
  testing.assert_sharding_invariant(SOURCE, state, 3, 8, mesh=MESH)


def test_every_assertion_passes_on_the_builtin_stages():
  # test_pipeline.py runs assert_batch_size_invariant, assert_jit_equals_eager,
  # assert_vmap_equals_loop and assert_resumes on the same stages
  pipe = _pipe()
  state = tfds_jax.init(pipe, seed=4)._replace(epoch=jnp.int32(1), index=jnp.int32(20))
  testing.assert_deterministic(pipe, state, 3)
  testing.assert_visits_every_record(pipe, state)
  testing.assert_sharding_invariant(pipe, state, 2, mesh=MESH)


@pytest.fixture(scope="module")
def ra_stream(toy_dirs):
  with tfds_jax.stream("toy_images", "train", data_dir=toy_dirs["array_record"], exclude_keys=["id"]) as s:
    yield s


@pytest.mark.parametrize("make", ["stream", "pipeline over a stream"])
def test_every_assertion_passes_on_a_random_access_stream(ra_stream, make):
  data = ra_stream if make == "stream" else _pipe(tfds_jax.random_flip(), tfds_jax.to_float(),
                                                  source=ra_stream)
  size = 8 if make == "stream" else None
  step = dict(train_step=_sum_step, carry=jnp.int32(0)) if make == "stream" else {}
  # test_stream.py resumes a stream in a fresh process, test_sharding.py shards one
  state = tfds_jax.init(data, seed=3, shuffle=True)._replace(index=jnp.int32(30))
  testing.assert_deterministic(data, state, 3, size, **step)
  testing.assert_resumes(data, state, 4, size, **step)
  testing.assert_visits_every_record(data, state, size)
  testing.assert_jit_equals_eager(data, state, 2, size, **step)
  testing.assert_batch_size_invariant(data, state, [5, 8], num_positions=20)
  with pytest.raises(ValueError, match="Expected an in-memory Source or Pipeline to vmap over, got a stream"):
    testing.assert_vmap_equals_loop(data, state, 2, size, seeds=[0, 1])


@settings(max_examples=6)
@given(source=testing.sources(max_records=24), data=st.data())
def test_properties_hold_for_arbitrary_sources_states_and_batch_sizes(source, data):
  state = data.draw(testing.states(source))
  batch_size = data.draw(testing.batch_sizes(source))
  testing.assert_resumes(source, state, 3, batch_size, restore_at=data.draw(st.integers(0, 2)))
  testing.assert_visits_every_record(source, state, batch_size, num_epochs=1)


# Failing on the broken examples, saying where ---------------------------------------------------

def test_a_stage_keyed_per_batch_fails_batch_size_and_sharding_invariance():
  pipe = _pipe(tfds_jax.stage(_batch_keyed, random=True))
  state = tfds_jax.init(pipe, seed=1)
  testing.assert_resumes(pipe, state, 4)  # keyed by position: it still resumes exactly
  testing.assert_deterministic(pipe, state, 2)
  with pytest.raises(AssertionError, match=r"whatever the batch size, got a difference in feature 'image'"
                     r" at position 4 \(epoch 0, index 4\) between batch size 8 \(step 0\) and 4 \(step 1\)"):
    testing.assert_batch_size_invariant(pipe, state, [8, 4])
  with pytest.raises(AssertionError, match=r"split over axes \('data',\) of mesh \{'data': 4\} to equal the batches read on one device, got a difference at step 0: batch feature 'image' at"):
    testing.assert_sharding_invariant(pipe, state, 2, mesh=MESH)


def test_a_stage_that_depends_on_the_batch_size_fails():
  pipe = _pipe(_batch_centred)
  state = tfds_jax.init(pipe, seed=2)
  with pytest.raises(AssertionError, match=r"position 0 \(epoch 0, index 0\) between batch size 8"):
    testing.assert_batch_size_invariant(pipe, state, [8, 2])
  with pytest.raises(AssertionError, match="SourceState"):
    testing.assert_sharding_invariant(pipe, state, 1, mesh=MESH)


def test_a_step_reading_a_global_counter_fails_determinism_resume_jit_and_vmap():
  state = tfds_jax.init(SOURCE, seed=5, shuffle=True)
  args = dict(train_step=_counting_step, carry=jnp.int32(0))
  with pytest.raises(AssertionError, match=r"from the same state, run twice, got a difference at step 0:"
                     r" carry leaf \(root\) at \[\]: \d+ vs \d+, 1 of 1 elements differing, the batches"
                     r" being equal: the train step differs;"
                     r" reproduce it from the state before that step, SourceState\(epoch=0, index=0, seed=5\)"):
    testing.assert_deterministic(SOURCE, state, 3, 8, **args)
  with pytest.raises(AssertionError, match=r"saved after 2 of 4 steps and restored .* at step 2: carry leaf"):
    testing.assert_resumes(SOURCE, state, 4, 8, **args)
  with pytest.raises(AssertionError, match="jitted and eagerly"):
    testing.assert_jit_equals_eager(SOURCE, state, 2, 8, **args)
  with pytest.raises(AssertionError, match=r"replica 0 \(seed 0\) of the vmapped run"):
    testing.assert_vmap_equals_loop(SOURCE, state, 2, 8, seeds=[0, 1], **args)


def test_a_restore_that_drops_the_seed_fails():
  state = tfds_jax.init(SOURCE, seed=8, shuffle=True)
  with pytest.raises(AssertionError, match=r"Expected the restored state to equal the saved one, got"
                     r" SourceState\(epoch=0, index=24, seed=None\) for SourceState\(epoch=0, index=24, seed=8\)"):
    testing.assert_resumes(SOURCE, state, 6, 8, restore=_drop_seed)


def test_a_stage_that_duplicates_records_fails_visits_and_one_that_drops_features_says_so():
  pipe = _pipe(_duplicating, batch_size=6)
  with pytest.raises(AssertionError, match=r"Expected epoch 0 \(positions 0 to 28\) to visit every record once,"
                     r" got 5 record\(s\) seen too often and 5 never seen \(record \d+ at positions \[0, 1\]\)"):
    testing.assert_visits_every_record(pipe, tfds_jax.init(pipe, seed=0))
  pipe = _pipe(_new_dict)
  with pytest.raises(AssertionError, match="Expected your stages to pass through every feature"):
    testing.assert_visits_every_record(pipe)


def test_a_step_that_depends_on_its_process_fails_in_a_fresh_process():
  # test_checkpoint.py resumes a run in a fresh process; here one that cannot be repeated there
  source, step, carry = testing_factories.process_dependent()
  state = tfds_jax.init(source, seed=9, shuffle=True)
  testing.assert_deterministic(source, state, 2, 5, train_step=step, carry=carry)  # one process: equal
  with pytest.raises(AssertionError, match=r"in a fresh process \(testing_factories:process_dependent\), got a"
                     r" difference at step 0: carry leaf"):
    testing.assert_deterministic(source, state, 2, 5, train_step=step, carry=carry,
                                 fresh_process="testing_factories:process_dependent")


def test_bad_arguments_are_clear():
  state = tfds_jax.init(SOURCE)
  with pytest.raises(ValueError, match=r"Expected batch_size to be an int in \[1, 29\] .* got None; pass batch_size="):
    testing.assert_deterministic(SOURCE, state, 2)
  with pytest.raises(ValueError, match=r"Expected restore_at in \[0, 4\)"):
    testing.assert_resumes(SOURCE, state, 4, 4, restore_at=4)
  with pytest.raises(ValueError, match="Expected a state with a seed to vmap over seeds"):
    testing.assert_vmap_equals_loop(SOURCE, state, 2, 4, seeds=[1])
  with pytest.raises(ValueError, match="Expected a train_step with carry="):
    testing.assert_deterministic(SOURCE, state, 2, 4, carry=0.0)
  with pytest.raises(ValueError, match="Expected fresh_process='module:function', got 'nomodule'"):
    testing.assert_deterministic(SOURCE, state, 2, 4, fresh_process="nomodule")
  with pytest.raises(ValueError, match="Expected at least two batch sizes"):
    testing.assert_batch_size_invariant(SOURCE, state, [4])
  with pytest.raises(ValueError, match=r"Expected batch_size=8 \(the pipeline's\) or None, got 4"):
    testing.assert_deterministic(_pipe(), tfds_jax.init(_pipe()), 2, 4)


# Strategies -------------------------------------------------------------------------------------

@given(source=testing.sources(min_records=2, max_records=10, max_features=2, max_rank=2, max_side=3))
def test_sources_have_small_arbitrary_shapes_and_dtypes(source):
  assert 2 <= source.num_records <= 10 and 1 <= len(source.data) <= 2
  for x in source.data.values():
    assert x.ndim <= 3 and all(1 <= d <= 3 for d in x.shape[1:])
    assert str(x.dtype) in testing.DTYPES


@given(source=testing.sources(element_spec=tfds_jax.element_spec(_pipe().source)))
def test_sources_follow_a_users_element_spec(source):
  assert tfds_jax.element_spec(source) == tfds_jax.element_spec(SOURCE)


@given(data=st.data(), n=st.integers(3, 40))
def test_states_and_batch_sizes_cover_positions_and_divisibility(data, n):
  state = data.draw(testing.states(n, max_epoch=2, shuffle=True))
  assert 0 <= int(state.epoch) <= 2 and 0 <= int(state.index) < n and state.seed.dtype == jnp.uint32
  assert n % data.draw(testing.batch_sizes(n, divides=True)) == 0
  if n not in (3,):  # every size in [1, 3] but 2 divides 3; 2 does not
    assert n % data.draw(testing.batch_sizes(n, divides=False)) != 0
  assert data.draw(testing.batch_sizes(n, multiple_of=2)) % 2 == 0


@given(mesh=testing.meshes(axis_names=("data", "model"), max_devices=8), small=testing.meshes(divides=6))
def test_meshes_use_the_available_devices(mesh, small):
  assert mesh.axis_names == ("data", "model")
  assert 1 <= mesh.devices.size <= 8 and len(set(mesh.devices.flat)) == mesh.devices.size
  assert 6 % small.devices.size == 0


def test_batch_sizes_that_cannot_exist_are_an_error():
  with pytest.raises(ValueError, match="not dividing 2, got none"):
    testing.batch_sizes(2, divides=False)


# Benchmark --------------------------------------------------------------------------------------

def _mlp_step(w, batch):
  x = batch["image"].reshape(batch["image"].shape[0], -1).astype(jnp.float32) / 255.0
  y = jax.nn.one_hot(batch["label"], 5)
  grad = jax.grad(lambda w: jnp.mean((x @ w - y) ** 2))(w)
  return w - 0.01 * grad


def test_benchmark_reports_consistent_figures_and_prints_a_table(ra_stream):
  w = jnp.zeros((6 * 6 * 3, 5))
  result = testing.benchmark(_mlp_step, w, SOURCE, tfds_jax.init(SOURCE, seed=0, shuffle=True), 12, 8,
                             repeats=3)
  assert (result.num_steps, result.batch_size, result.repeats, result.loop) == (12, 8, 3, "lax.fori_loop")
  assert result.records_per_s == pytest.approx(8 / result.step_s)
  assert result.input_free_records_per_s == pytest.approx(8 / result.input_free_step_s)
  assert result.input_share == pytest.approx(1 - result.input_free_step_s / result.step_s)
  assert result.compile_s > 0 and result.input_free_compile_s > 0
  table = str(result)
  assert "12 steps of batch 8 in one lax.fori_loop on cpu" in table and "input-free limit" in table
  assert repr(result) == table
  unfused = testing.benchmark(_mlp_step, w, SOURCE, tfds_jax.init(SOURCE), 4, 8, repeats=1, fused=False)
  assert unfused.loop == "Python loop" and "in a Python loop of jitted steps" in str(unfused)
  streamed = testing.benchmark(lambda c, b: c + b["image"].astype(jnp.float32).sum(), jnp.float32(0),
                               ra_stream, tfds_jax.init(ra_stream), 4, 8, repeats=1)
  assert streamed.loop == "Python loop" and streamed.records_per_s > 0
  import matplotlib  # pylint: disable=import-outside-toplevel
  matplotlib.use("Agg")
  ax = testing.plot_benchmarks({"mlp": result, "stream": streamed})
  assert [t.get_text() for t in ax.get_yticklabels()] == ["mlp", "stream"]
  assert f"input\n{result.step_s * 1e3:.3f} ms/step, {result.records_per_s:,.0f} rec/s" == \
      ax.texts[0].get_text().split("% ", 1)[1]


# Optional dependencies (test_public_api.py: importing tfds_jax.testing imports neither) ---------

def test_without_hypothesis_the_assertions_work_and_strategies_say_what_to_install():
  code = """
import sys
sys.modules["hypothesis"] = None  # as if not installed
import numpy as np, tfds_jax
from tfds_jax import testing
src = tfds_jax.from_arrays({"x": np.arange(6)})
testing.assert_deterministic(src, tfds_jax.init(src), 2, 3)
try:
  testing.sources()
except ImportError as e:
  print(e)
"""
  result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env={**os.environ, "JAX_PLATFORMS": "cpu"})
  assert result.returncode == 0, result.stderr
  assert "Expected hypothesis for tfds_jax.testing's strategies, got none installed; install it with" \
         " `pip install tfds_jax[testing]`" in result.stdout


def test_all_is_complete_and_documented():
  import inspect  # pylint: disable=import-outside-toplevel
  public = {n for n in dir(testing) if not n.startswith("_") and not inspect.ismodule(getattr(testing, n))}
  assert set(testing.__all__) == public - {"annotations"}
  for name in testing.__all__:
    obj = getattr(testing, name)
    if inspect.isfunction(obj):
      doc = inspect.getdoc(obj) or ""
      sections = ["Returns:" if not name.startswith("assert_") else "Raises:", "Example:"]
      if inspect.signature(obj).parameters:
        sections.append("Args:")
      for section in sections:
        assert section in doc, f"{name} docstring lacks {section}"
