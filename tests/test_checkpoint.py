"""Checkpointing: the state saves as a plain pytree, and restores strictly."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import testing_factories
from tfds_jax import from_arrays, init, next_batch, state_from_dict, state_to_dict
from tfds_jax import testing


def _source(n, **kw):
  return from_arrays({"x": np.arange(n, dtype=np.int32)}, **kw)


@given(n=st.integers(1, 120), before=st.integers(0, 30), after=st.integers(1, 30), data=st.data())
def test_save_restore_resumes_exactly(n, before, after, data):
  source = _source(n)
  state = data.draw(testing.states(source))  # shuffled or not, from any position
  testing.assert_resumes(source, state, before + after, data.draw(testing.batch_sizes(source)),
                         restore_at=before)


def test_state_is_a_plain_pytree_that_numpy_saves(tmp_path):
  source = _source(20)
  state = init(source, seed=5, shuffle=True)
  _, state = next_batch(source, state, 7)
  leaves, treedef = jax.tree_util.tree_flatten(state)
  np.savez(tmp_path / "leaves.npz", *leaves)
  loaded = np.load(tmp_path / "leaves.npz")
  restored = jax.tree_util.tree_unflatten(treedef, [jnp.asarray(loaded[f"arr_{i}"]) for i in range(len(leaves))])
  np.testing.assert_array_equal(np.asarray(next_batch(source, restored, 7)[0]["x"]),
                                np.asarray(next_batch(source, state, 7)[0]["x"]))


def test_resume_in_a_new_process():
  source, train_step, carry = testing_factories.regression()
  testing.assert_resumes(source, init(source, seed=99, shuffle=True), 11, 8, train_step=train_step,
                         carry=carry, restore_at=5, fresh_process="testing_factories:regression")


def _saved(n=10, shuffle=True, **kw):
  source = _source(n, **kw)
  return source, state_to_dict(source, init(source, seed=3, shuffle=shuffle))


def test_restore_errors():
  source, d = _saved()
  with pytest.raises(TypeError, match="Expected a dict saved by state_to_dict, got list"):
    state_from_dict(source, [1, 2])
  with pytest.raises(ValueError, match=r"missing \['index'\], unknown \[\]"):
    state_from_dict(source, {k: v for k, v in d.items() if k != "index"})
  with pytest.raises(ValueError, match=r"missing \[\], unknown \['key'\]"):
    state_from_dict(source, {**d, "key": np.uint32(1)})
  with pytest.raises(ValueError, match="Expected checkpoint field 'epoch' to be an integer scalar, got dtype float64"):
    state_from_dict(source, {**d, "epoch": np.float64(1.0)})
  with pytest.raises(ValueError, match=r"Expected checkpoint field 'index' in \[0, 10\), got 10"):
    state_from_dict(source, {**d, "index": np.int32(10)})
  with pytest.raises(ValueError, match="Expected a checkpoint for a dataset of 11 records .*got one saved for 10 records"):
    state_from_dict(_source(11), d)
  with pytest.raises(ValueError, match="Expected checkpoint format 1, got 2"):
    state_from_dict(source, {**d, "format": np.int32(2)})
  with pytest.raises(ValueError, match="Expected a checkpoint with shuffle=False, got a shuffled one"):
    state_from_dict(source, d, shuffle=False)
  _, unshuffled = _saved(shuffle=False)
  with pytest.raises(ValueError, match="Expected a checkpoint with shuffle=True, got an unshuffled one"):
    state_from_dict(source, unshuffled, shuffle=True)


def test_restore_checks_dataset_identity():
  source, d = _saved(name="mnist", split="train")
  assert str(d["name"]) == "mnist"
  restored = state_from_dict(source, d)
  assert int(restored.seed) == 3
  with pytest.raises(ValueError, match="Expected a checkpoint for split 'test', got one saved for 'train'"):
    state_from_dict(_source(10, name="mnist", split="test"), d)
