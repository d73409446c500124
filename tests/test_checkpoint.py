"""Checkpointing: the state saves as a plain pytree, and restores strictly."""

import json

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
    state_from_dict(source, {**d, "key": 1})
  with pytest.raises(ValueError, match="Expected checkpoint field 'epoch' to be an integer scalar, got float64"):
    state_from_dict(source, {**d, "epoch": np.float64(1.0)})
  with pytest.raises(ValueError, match="Expected checkpoint field 'epoch' to be an integer scalar, got bool"):
    state_from_dict(source, {**d, "epoch": True})
  with pytest.raises(ValueError, match=r"Expected checkpoint field 'index' in \[0, 10\), got 10"):
    state_from_dict(source, {**d, "index": 10})
  with pytest.raises(ValueError, match=r"Expected checkpoint field 'index' in \[0, 10\), got -1"):
    state_from_dict(source, {**d, "index": np.int32(-1)})
  with pytest.raises(ValueError, match="Expected a checkpoint for 11 records .*got one saved for 10 records"):
    state_from_dict(_source(11), d)
  with pytest.raises(ValueError, match="Expected checkpoint format 2, got 1; .*tfds_jax 0.1.0"):
    state_from_dict(source, {"format": np.int32(1), "num_records": 10, "epoch": 0, "index": 0})
  with pytest.raises(ValueError, match="Expected a checkpoint with shuffle=False, got a shuffled one"):
    state_from_dict(source, d, shuffle=False)
  _, unshuffled = _saved(shuffle=False)
  assert "seed" not in unshuffled and unshuffled["shuffle"] == 0
  with pytest.raises(ValueError, match="Expected a checkpoint with shuffle=True, got an unshuffled one"):
    state_from_dict(source, unshuffled, shuffle=True)


def test_save_checks_the_state_against_its_source():
  train, test = _source(100), _source(36)
  state = init(train, seed=1, shuffle=True)
  for _ in range(9):
    _, state = next_batch(train, state, 10)
  assert int(state.index) == 90
  with pytest.raises(ValueError, match=r"Expected a state with 0 <= index < 36 .*got index 90"):
    state_to_dict(test, state)  # a train state saved against the test split
  with pytest.raises(ValueError, match="Expected a state with epoch >= 0, got epoch -1"):
    state_to_dict(train, state._replace(epoch=jnp.int32(-1)))
  with pytest.raises(TypeError, match=r"Expected SourceState.index to be an integer scalar, got float32\[\]"):
    state_to_dict(train, state._replace(index=jnp.float32(3.0)))
  with pytest.raises(TypeError, match=r"got int32\[4\]; save one state at a time"):
    state_to_dict(train, jax.vmap(lambda s: init(train, seed=s, shuffle=True))(jnp.arange(4)))
  with pytest.raises(TypeError, match="Expected a SourceState .*got dict"):
    state_to_dict(train, {"epoch": 0, "index": 0, "seed": None})
  with pytest.raises(TypeError, match="got a traced epoch .*cannot run inside jit"):
    jax.jit(lambda s: state_to_dict(train, s)["epoch"])(state)


def test_pipeline_checkpoints_keep_the_shuffle_mode():
  import tfds_jax  # pylint: disable=import-outside-toplevel
  source = _source(30)
  ordered = tfds_jax.pipeline(source, batch_size=5, shuffle=False)
  shuffled = tfds_jax.pipeline(source, batch_size=5, shuffle=True)
  d = state_to_dict(ordered, init(ordered, seed=7))
  assert d["shuffle"] == 0 and d["seed"] == 7  # the seed still drives the stages
  assert int(state_from_dict(ordered, d).seed) == 7
  assert state_from_dict(source, d).seed is None  # into the bare source: sequential, as saved
  with pytest.raises(ValueError, match="Expected a checkpoint with shuffle=True, got an unshuffled one"):
    state_from_dict(shuffled, d)
  with pytest.raises(ValueError, match="Expected a state with a seed for the pipeline"):
    state_to_dict(ordered, init(source))
  with pytest.raises(ValueError, match="Expected a checkpoint with a seed for a pipeline"):
    state_from_dict(ordered, state_to_dict(source, init(source)))


def test_restore_checks_dataset_identity():
  source, d = _saved(name="mnist", split="train")
  restored = state_from_dict(source, d)
  assert int(restored.seed) == 3
  for other in (_source(10, name="mnist", split="test"), _source(10, name="emnist", split="train"),
                _source(10)):
    with pytest.raises(ValueError, match=r"Expected a checkpoint of .*got one saved for other data of the"
                       " same size .*give them as when the checkpoint was saved"):
      state_from_dict(other, d)
  _, unnamed = _saved()
  with pytest.raises(ValueError, match=r"Expected a checkpoint of mnist\[train\]"):
    state_from_dict(source, unnamed)
  assert int(state_from_dict(_source(10), unnamed).seed) == 3  # unnamed into unnamed: nothing to tell apart


def test_content_fingerprint_is_opt_in_and_checked():
  source = _source(10)
  state = init(source, seed=3, shuffle=True)
  assert "content" not in state_to_dict(source, state)
  d = state_to_dict(source, state, content=True)
  assert int(state_from_dict(source, json.loads(json.dumps(d))).seed) == 3
  changed = from_arrays({"x": np.arange(10, dtype=np.int32)[::-1].copy()})
  with pytest.raises(ValueError, match="Expected the records the checkpoint was saved with"):
    state_from_dict(changed, d)


def _resumes(source, saved, restored, batch_size=4, steps=5):
  for _ in range(steps):
    a, saved = next_batch(source, saved, batch_size)
    b, restored = next_batch(source, restored, batch_size)
    np.testing.assert_array_equal(np.asarray(a["x"]), np.asarray(b["x"]))


def test_json_round_trip():
  source = _source(23, name="toy", split="train")
  state = init(source, seed=2**32 - 1, shuffle=True)
  _, state = next_batch(source, state, 7)
  d = state_to_dict(source, state)
  assert all(type(v) is int for v in d.values())  # plain ints: json, npz and orbax take them
  text = json.dumps(d)
  _resumes(source, state, state_from_dict(source, json.loads(text), shuffle=True))


def test_orbax_standard_checkpointer_round_trip(tmp_path):
  ocp = pytest.importorskip("orbax.checkpoint")
  source = _source(23)
  state = init(source, seed=11, shuffle=True)
  _, state = next_batch(source, state, 7)
  with ocp.StandardCheckpointer() as checkpointer:
    checkpointer.save(tmp_path / "data_state", state_to_dict(source, state))
    checkpointer.wait_until_finished()
    restored = checkpointer.restore(tmp_path / "data_state")
  _resumes(source, state, state_from_dict(source, restored, shuffle=True))


def test_orbax_checkpoint_manager_holds_model_and_data_state(tmp_path):
  ocp = pytest.importorskip("orbax.checkpoint")
  source = _source(30, name="toy", split="train")
  params = {"w": jnp.arange(6.0).reshape(2, 3), "b": jnp.ones(3)}
  state = init(source, seed=5, shuffle=True)
  for step in range(1, 4):
    _, state = next_batch(source, state, 8)
    with ocp.CheckpointManager(tmp_path / "run", options=ocp.CheckpointManagerOptions(max_to_keep=2)) as mngr:
      mngr.save(step, args=ocp.args.Composite(
          params=ocp.args.StandardSave(params),
          data=ocp.args.JsonSave(state_to_dict(source, state)),
          data_as_arrays=ocp.args.StandardSave(state_to_dict(source, state))))
      mngr.wait_until_finished()
  with ocp.CheckpointManager(tmp_path / "run") as mngr:
    assert mngr.latest_step() == 3
    restored = mngr.restore(3, args=ocp.args.Composite(
        params=ocp.args.StandardRestore(params), data=ocp.args.JsonRestore(),
        data_as_arrays=ocp.args.StandardRestore()))
  jax.tree.map(np.testing.assert_array_equal, restored["params"], params)
  _resumes(source, state, state_from_dict(source, restored["data"]))
  _resumes(source, state, state_from_dict(source, restored["data_as_arrays"]))
  with pytest.raises(ValueError, match="got one saved for other data"):
    state_from_dict(_source(30), restored["data"])


def test_tfds_identity_is_the_dataset_version_and_split_not_the_path(toy_dirs, tmp_path, monkeypatch):
  import shutil  # pylint: disable=import-outside-toplevel
  import tfds_jax  # pylint: disable=import-outside-toplevel
  monkeypatch.setenv("TFDS_JAX_CACHE_DIR", str(tmp_path / "cache"))
  data = toy_dirs["array_record"]
  train = tfds_jax.load("toy_images", "train", data_dir=data, include_keys=["image", "label"])
  state = init(train, seed=4, shuffle=True)
  _, state = next_batch(train, state, 6)
  d = state_to_dict(train, state)
  cached = tfds_jax.load("toy_images", "train", data_dir=data, include_keys=["image", "label"])
  _resumes_tfds(cached, state, state_from_dict(cached, d))  # the cached load is the same data
  copy = tmp_path / "copy"
  shutil.copytree(data, copy)  # the prepared files on another disk or machine
  moved = tfds_jax.load("toy_images", "train", data_dir=copy, include_keys=["image", "label"], cache=False)
  _resumes_tfds(moved, state, state_from_dict(moved, d))
  with tfds_jax.stream("toy_images", "train", data_dir=data, include_keys=["image", "label"]) as s:
    _resumes_tfds(s, state, state_from_dict(s, d), steps=2)  # random access: the eager order
  head = tfds_jax.load("toy_images", "train[:12]", data_dir=data, include_keys=["image", "label"], cache=False)
  test = tfds_jax.load("toy_images", "test", data_dir=data, include_keys=["image", "label"], cache=False)
  assert head.num_records == test.num_records == 12
  with pytest.raises(ValueError, match=r"Expected a checkpoint of toy_images\[test\] .*other data of the same size"):
    state_from_dict(test, state_to_dict(head, init(head)))
  arrays = from_arrays({k: np.asarray(v) for k, v in train.data.items()})  # same records, no identity
  with pytest.raises(ValueError, match=r"Expected a checkpoint of an unnamed from_arrays source .*other data"):
    state_from_dict(arrays, d)


def _resumes_tfds(source, saved, restored, steps=3):
  for _ in range(steps):
    a, saved = next_batch(source, saved, 6)
    b, restored = next_batch(source, restored, 6)
    np.testing.assert_array_equal(np.asarray(a["label"]), np.asarray(b["label"]))
