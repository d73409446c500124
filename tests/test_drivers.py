"""run_steps / run_epochs: the same batches as next_batch, in one jit; seeds vmapped; resumable."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import tfds_jax

N = 45
RNG = np.random.default_rng(2)
DATA = {"x": RNG.normal(size=(N, 3)).astype(np.float32), "y": RNG.normal(size=(N,)).astype(np.float32)}
SOURCE = tfds_jax.from_arrays(DATA)
OPT = optax.sgd(0.05)


def _loss(w, batch):
  return jnp.mean((batch["x"] @ w - batch["y"]) ** 2)


def train_step(carry, batch):
  w, opt_state, seen = carry
  grads = jax.grad(_loss)(w, batch)
  updates, opt_state = OPT.update(grads, opt_state)
  return optax.apply_updates(w, updates), opt_state, seen + batch["x"][:, 0].sum()


def _carry():
  w = jnp.zeros(3)
  return (w, OPT.init(w), jnp.float32(0))


def _python_loop(source, state, steps, batch_size=None):
  carry, step = _carry(), jax.jit(train_step)
  for _ in range(steps):
    batch, state = tfds_jax.next_batch(source, state, batch_size)
    carry = step(carry, batch)
  return carry, state


def _close(a, b):
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=1e-5, atol=1e-6)


def test_run_steps_equals_a_python_loop():
  state = tfds_jax.init(SOURCE, seed=3, shuffle=True)
  got = tfds_jax.run_steps(train_step, _carry(), SOURCE, state, 13, 8)
  want = _python_loop(SOURCE, state, 13, 8)
  _close(got, want)
  _close(tfds_jax.run_steps(train_step, _carry(), SOURCE, state, 13, 8, fused=False), want)
  assert (int(got[1].epoch), int(got[1].index)) == divmod(13 * 8, N)


def test_run_epochs_stops_at_the_epoch_and_calls_back_between_epochs():
  calls = []
  state = tfds_jax.init(SOURCE, seed=1, shuffle=True)
  carry, end = tfds_jax.run_epochs(train_step, _carry(), SOURCE, state, 3, 8, progress=False,
                                   on_epoch_end=lambda e, c, s: calls.append((e, int(s.epoch), int(s.index))))
  # batches of 8 over 45 records: an epoch ends with the batch that crosses into the next
  steps = [6, 6, 5]
  assert calls == [(0, 1, 3), (1, 2, 6), (2, 3, 1)]
  want = _python_loop(SOURCE, state, sum(steps), 8)
  _close((carry, end), want)
  chunked = tfds_jax.run_epochs(train_step, _carry(), SOURCE, state, 3, 8, progress=True)
  _close(chunked, want)  # about 20 calls per epoch instead of one: the same run
  unfused = tfds_jax.run_epochs(train_step, _carry(), SOURCE, state, 3, 8, progress=False, fused=False)
  _close(unfused, want)  # one jitted call per batch: the same run


def test_run_epochs_compiles_once():
  step = chex.assert_max_traces(train_step, n=1)
  state = tfds_jax.init(SOURCE, seed=1, shuffle=True)
  carry, state = tfds_jax.run_epochs(step, _carry(), SOURCE, state, 2, 8, progress=False)
  tfds_jax.run_epochs(step, carry, SOURCE, state, 4, 8, progress=False)


def test_resuming_from_a_checkpoint_finishes_the_same_schedule():
  pipe = tfds_jax.pipeline(SOURCE, batch_size=7, shuffle=True)
  state = tfds_jax.init(pipe, seed=11)
  want = tfds_jax.run_epochs(train_step, _carry(), pipe, state, 3, progress=False)
  carry, mid = tfds_jax.run_steps(train_step, _carry(), pipe, state, 9)  # stop mid-epoch 1
  saved = {k: np.asarray(v) for k, v in tfds_jax.state_to_dict(pipe, mid).items()}
  saved_carry = jax.device_get(carry)
  restored = tfds_jax.state_from_dict(pipe, saved)
  got = tfds_jax.run_epochs(train_step, saved_carry, pipe, restored, 3, progress=False)
  _close(got, want)


def test_replica_k_of_a_vmapped_run_equals_the_single_run_with_seed_k():
  pipe = tfds_jax.pipeline(SOURCE, tfds_jax.stage(
      lambda keys, b: {**b, "x": b["x"] + 0.1 * jax.vmap(lambda k: jax.random.normal(k, (3,)))(keys)},
      random=True), batch_size=8, shuffle=True)
  seeds = jnp.arange(4, dtype=jnp.uint32) * 1000
  states = jax.vmap(lambda s: tfds_jax.init(pipe, seed=s))(seeds)
  carries = jax.vmap(lambda _: _carry())(seeds)
  run = jax.jit(jax.vmap(lambda c, s, p: tfds_jax.run_steps(train_step, c, p, s, 20), in_axes=(0, 0, None)))
  many, many_states = run(carries, states, pipe)
  for k in range(4):
    one, one_state = tfds_jax.run_steps(train_step, _carry(), pipe, tfds_jax.init(pipe, seed=int(seeds[k])), 20)
    _close(jax.tree.map(lambda x: x[k], many), one)
    assert int(many_states.index[k]) == int(one_state.index)
  assert not np.allclose(many[0][0], many[0][1])  # different seeds, different runs


@pytest.fixture(scope="module")
def toy(toy_dirs):
  return toy_dirs["array_record"]


def test_drivers_over_a_stream_equal_the_eager_run(toy):
  keys = ["image", "label"]

  def step(total, batch):
    return total + jnp.sum(batch["image"].astype(jnp.float32)) * (1 + jnp.sum(batch["label"]))

  eager = tfds_jax.load("toy_images", "train", data_dir=toy, include_keys=keys, cache=False)
  with tfds_jax.stream("toy_images", "train", data_dir=toy, include_keys=keys) as s:
    for source in (s, tfds_jax.pipeline(s, tfds_jax.random_flip(), batch_size=6, shuffle=True)):
      other = eager if source is s else tfds_jax.pipeline(eager, tfds_jax.random_flip(), batch_size=6,
                                                          shuffle=True)
      size = 6 if source is s else None
      got = tfds_jax.run_epochs(step, jnp.float32(0), source, tfds_jax.init(source, seed=5, shuffle=True),
                                2, size, progress=False)
      want = tfds_jax.run_epochs(step, jnp.float32(0), other, tfds_jax.init(other, seed=5, shuffle=True),
                                 2, size, progress=False)
      _close(got, want)
