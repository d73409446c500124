"""Checkpointing: the state saves as a plain pytree, and restores strictly."""

import os
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from tfds_jax import from_arrays, init, next_batch, state_from_dict, state_to_dict


def _source(n, **kw):
  return from_arrays({"x": np.arange(n, dtype=np.int32)}, **kw)


@given(n=st.integers(1, 120), seed=st.integers(0, 2**32 - 1), shuffle=st.booleans(),
       before=st.integers(0, 30), after=st.integers(1, 30), data=st.data())
def test_save_restore_resumes_exactly(tmp_path_factory, n, seed, shuffle, before, after, data):
  batch_size = data.draw(st.integers(1, n))
  source = _source(n)
  state = init(source, seed=seed, shuffle=shuffle)
  uninterrupted = []
  for step in range(before + after):
    if step == before:
      path = tmp_path_factory.mktemp("ckpt") / "state.npz"
      np.savez(path, **state_to_dict(source, state))
    batch, state = next_batch(source, state, batch_size)
    uninterrupted.append(np.asarray(batch["x"]))
  restored = state_from_dict(source, dict(np.load(path)), shuffle=shuffle)
  for step in range(after):
    batch, restored = next_batch(source, restored, batch_size)
    np.testing.assert_array_equal(np.asarray(batch["x"]), uninterrupted[before + step])
  jax.tree.map(np.testing.assert_array_equal, restored, state)


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


def test_resume_in_a_new_process(tmp_path):
  source = _source(37)
  state = init(source, seed=99, shuffle=True)
  for _ in range(5):
    _, state = next_batch(source, state, 8)
  np.savez(tmp_path / "state.npz", **state_to_dict(source, state))
  expected = [np.asarray(b["x"]) for b in _take(source, state, 8, 6)]
  script = textwrap.dedent(f"""
      import numpy as np, tfds_jax
      src = tfds_jax.from_arrays({{"x": np.arange(37, dtype=np.int32)}})
      state = tfds_jax.state_from_dict(src, dict(np.load({str(tmp_path / 'state.npz')!r})), shuffle=True)
      out = []
      for _ in range(6):
        b, state = tfds_jax.next_batch(src, state, 8)
        out.append(np.asarray(b["x"]))
      np.save({str(tmp_path / 'out.npy')!r}, np.stack(out))
  """)
  subprocess.run([sys.executable, "-c", script], check=True, env={**os.environ, "JAX_PLATFORMS": "cpu"})
  np.testing.assert_array_equal(np.load(tmp_path / "out.npy"), np.stack(expected))


def _take(source, state, batch_size, steps):
  out = []
  for _ in range(steps):
    batch, state = next_batch(source, state, batch_size)
    out.append(batch)
  return out


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
