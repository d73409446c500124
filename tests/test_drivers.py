"""run_steps / run_epochs: the same batches as next_batch, in one jit; seeds vmapped; resumable."""

import os
import subprocess
import sys
import textwrap

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


def metric_step(carry, batch):
  new = train_step(carry, batch)
  return new, {"loss": _loss(carry[0], batch), "first": batch["x"][0, 0], "n": jnp.int32(batch["x"].shape[0])}


def _python_metrics(source, state, steps, batch_size=None):
  carry, step, out = _carry(), jax.jit(metric_step), []
  for _ in range(steps):
    batch, state = tfds_jax.next_batch(source, state, batch_size)
    carry, m = step(carry, batch)
    out.append(m)
  return carry, state, jax.tree.map(lambda *xs: np.stack(xs), *out)


@pytest.mark.parametrize("fused", [True, False])
def test_run_steps_collects_metrics(fused):
  state = tfds_jax.init(SOURCE, seed=3, shuffle=True)
  want_carry, want_state, want = _python_metrics(SOURCE, state, 13, 8)
  carry, end, stacked = tfds_jax.run_steps(metric_step, _carry(), SOURCE, state, 13, 8, metrics="stack", fused=fused)
  _close((carry, end), (want_carry, want_state))
  assert stacked["loss"].shape == (13,) and stacked["n"].dtype == jnp.int32
  _close(stacked, want)
  _, _, mean = tfds_jax.run_steps(metric_step, _carry(), SOURCE, state, 13, 8, metrics="mean", fused=fused)
  _, _, total = tfds_jax.run_steps(metric_step, _carry(), SOURCE, state, 13, 8, metrics="sum", fused=fused)
  _close(mean, jax.tree.map(lambda x: x.astype(np.float32).mean(0), want))
  assert int(total["n"]) == 13 * 8 and mean["n"].dtype == jnp.float32
  _close(total["loss"], want["loss"].sum())
  _, _, none = tfds_jax.run_steps(metric_step, _carry(), SOURCE, state, 0, 8, metrics="stack", fused=fused)
  assert none["loss"].shape == (0,)


def test_run_epochs_collects_metrics_per_epoch_and_passes_them_to_the_callback():
  state = tfds_jax.init(SOURCE, seed=1, shuffle=True)
  _, _, want = _python_metrics(SOURCE, state, 17, 8)  # 6, 6 and 5 steps: see the test above
  seen = []
  for progress, fused in ((False, True), (True, True), (False, False)):
    _, end, history = tfds_jax.run_epochs(
        metric_step, _carry(), SOURCE, state, 3, 8, metrics="stack", progress=progress, fused=fused,
        on_epoch_end=lambda e, c, s, m: seen.append((e, int(s.epoch), m["loss"].shape[0])))
    assert [h["loss"].shape[0] for h in history] == [6, 6, 5] and int(end.epoch) == 3
    _close(np.concatenate([h["loss"] for h in history]), want["loss"])
  assert seen == [(0, 1, 6), (1, 2, 6), (2, 3, 5)] * 3
  _, _, means = tfds_jax.run_epochs(metric_step, _carry(), SOURCE, state, 3, 8, metrics="mean", progress=False)
  _close([h["loss"] for h in means], [want["loss"][a:b].mean() for a, b in ((0, 6), (6, 12), (12, 17))])


def test_drivers_metrics_over_a_stream(toy_dirs):
  def step(total, batch):
    return total + jnp.sum(batch["label"]), {"labels": batch["label"]}

  eager = tfds_jax.load("toy_images", "train", data_dir=toy_dirs["array_record"], include_keys=["image", "label"],
                        cache=False)
  with tfds_jax.stream("toy_images", "train", data_dir=toy_dirs["array_record"], include_keys=["image", "label"]) as s:
    for metrics in ("stack", "sum"):
      got = tfds_jax.run_steps(step, jnp.int32(0), s, tfds_jax.init(s, seed=2, shuffle=True), 9, 6, metrics=metrics)
      want = tfds_jax.run_steps(step, jnp.int32(0), eager, tfds_jax.init(eager, seed=2, shuffle=True), 9, 6,
                                metrics=metrics)
      _close(got, want)
    got = tfds_jax.run_epochs(step, jnp.int32(0), s, tfds_jax.init(s, seed=2, shuffle=True), 2, 6, metrics="stack",
                              progress=False)
  want = tfds_jax.run_epochs(step, jnp.int32(0), eager, tfds_jax.init(eager, seed=2, shuffle=True), 2, 6,
                             metrics="stack", progress=False)
  _close(got, want)


def test_metrics_runs_trace_the_step_once():
  step = chex.assert_max_traces(metric_step, n=1)
  state = tfds_jax.init(SOURCE, seed=1, shuffle=True)
  carry, state, _ = tfds_jax.run_epochs(step, _carry(), SOURCE, state, 2, 8, metrics="mean", progress=False)
  tfds_jax.run_steps(step, carry, SOURCE, state, 4, 8, metrics="mean")


def test_driver_errors():
  state = tfds_jax.init(SOURCE)
  with pytest.raises(ValueError, match="Expected num_steps >= 0, got -3"):
    tfds_jax.run_steps(train_step, _carry(), SOURCE, state, -3, 8)
  for bad in (2.5, True, "3"):
    with pytest.raises(TypeError, match="Expected num_steps to be a static Python int, got"):
      tfds_jax.run_steps(train_step, _carry(), SOURCE, state, bad, 8)
  with pytest.raises(ValueError, match="Expected num_epochs >= 0, got -1"):
    tfds_jax.run_epochs(train_step, _carry(), SOURCE, state, -1, 8)
  with pytest.raises(ValueError, match=r"Expected metrics to be one of \[None, 'stack', 'mean', 'sum'\], got 'avg'"):
    tfds_jax.run_steps(metric_step, _carry(), SOURCE, state, 3, 8, metrics="avg")
  with pytest.raises(TypeError, match=r"it returns \(carry, metrics\): pass metrics='stack'"):
    tfds_jax.run_steps(metric_step, _carry(), SOURCE, state, 3, 8)  # Flax style without the opt-in
  with pytest.raises(TypeError, match=r"Expected train_step to return \(carry, metrics\) with metrics='mean'"):
    tfds_jax.run_steps(train_step, _carry(), SOURCE, state, 3, 8, metrics="mean")
  with pytest.raises(TypeError, match="Expected train_step to return a carry of the structure it was given"):
    tfds_jax.run_steps(lambda c, b: c[:2], _carry(), SOURCE, state, 3, 8)
  with pytest.raises(TypeError, match=r"keep the carry's leaf \[2\] as float32\[\], got float32\[3\]"):
    tfds_jax.run_steps(lambda c, b: (c[0], c[1], b["x"][0]), _carry(), SOURCE, state, 3, 8)
  with pytest.raises(TypeError, match=r"keep the carry's leaf \(root\) as int32\[\], got float32\[\]"):
    tfds_jax.run_epochs(lambda c, b: c + b["y"].sum(), jnp.int32(0), SOURCE, state, 1, 8, progress=False)
  with pytest.raises(TypeError, match="run_epochs runs a Python loop .*cannot run inside jit"):
    jax.jit(lambda s: tfds_jax.run_epochs(train_step, _carry(), SOURCE, s, 1, 8)[0])(state)


def test_drivers_check_concrete_states_and_functions_before_running():
  # An eager call knows the state's values: an out-of-range one is an error, as for next_batch
  # (it was read modulo the size inside the jitted loop, without a word).
  bad = tfds_jax.SourceState(jnp.int32(0), jnp.int32(N + 26), jnp.uint32(2))
  pipe = tfds_jax.pipeline(SOURCE, batch_size=8, shuffle=True)
  match = rf"Expected a state of the source with epoch >= 0 and 0 <= index < {N} .* got epoch 0, index {N + 26}"
  for call in (lambda: tfds_jax.run_steps(train_step, _carry(), SOURCE, bad, 3, 8),
               lambda: tfds_jax.run_steps(train_step, _carry(), SOURCE, bad, 3, 8, fused=False),
               lambda: tfds_jax.run_steps(train_step, _carry(), pipe, bad, 3),
               lambda: tfds_jax.run_epochs(train_step, _carry(), SOURCE, bad, 1, 8, progress=False)):
    with pytest.raises(ValueError, match=match):
      call()
  # Inside your own jit the state is traced: read modulo the size, as documented for next_batch.
  carry, state = jax.jit(lambda s: tfds_jax.run_steps(train_step, _carry(), SOURCE, s, 3, 8))(bad)
  _close(carry, tfds_jax.run_steps(train_step, _carry(), SOURCE, bad._replace(index=jnp.int32(26)), 3, 8)[0])
  state = tfds_jax.init(SOURCE)
  with pytest.raises(TypeError, match="Expected train_step to be a function .carry, batch. -> carry, got int 3"):
    tfds_jax.run_steps(3, _carry(), SOURCE, state, 2, 8)
  with pytest.raises(TypeError, match="Expected on_epoch_end to be a function .epoch, carry, state. .* got int 3"):
    tfds_jax.run_epochs(train_step, _carry(), SOURCE, state, 1, 8, on_epoch_end=3, progress=False)


def test_run_steps_passes_sharding_to_next_batch():
  from jax.sharding import Mesh, NamedSharding, PartitionSpec as P  # pylint: disable=import-outside-toplevel
  mesh = Mesh(np.array(jax.devices()[:4]), ("data",))
  source = tfds_jax.from_arrays(DATA, device=NamedSharding(mesh, P()))
  sharding = NamedSharding(mesh, P("data"))
  shardings = []

  def step(carry, batch):
    shardings.append(batch["x"].sharding if hasattr(batch["x"], "sharding") else None)
    return train_step(carry, batch), {"first": batch["x"][:, 0]}

  state = tfds_jax.init(source, seed=3, shuffle=True)
  got = tfds_jax.run_steps(step, _carry(), source, state, 5, 8, metrics="stack", sharding=sharding)
  want = tfds_jax.run_steps(step, _carry(), SOURCE, state, 5, 8, metrics="stack")
  _close(got, want)
  unfused = tfds_jax.run_epochs(step, _carry(), source, state, 1, 8, metrics="stack", sharding=sharding,
                                fused=False, progress=False)
  _close(unfused[2][0]["first"][:5], want[2]["first"])


def test_progress_bar_and_callback_output_get_lines_of_their_own(tmp_path):
  script = tmp_path / "run.py"
  script.write_text(textwrap.dedent("""
      import time, jax, jax.numpy as jnp, numpy as np, tfds_jax
      src = tfds_jax.from_arrays({"x": np.ones((20, 1), np.float32)})
      def slow(c, b):
        return jax.pure_callback(lambda x: (time.sleep(0.08), x)[1], jax.ShapeDtypeStruct((), jnp.float32),
                                 c + b["x"].sum())
      tfds_jax.run_epochs(slow, jnp.float32(0), src, tfds_jax.init(src), 2, 1,
                          on_epoch_end=lambda e, c, s: print(f"callback epoch {e} state.epoch {int(s.epoch)}"))
  """))
  out = subprocess.run([sys.executable, str(script)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                       env={**os.environ, "PYTHONUNBUFFERED": "1", "JAX_PLATFORMS": "cpu"}, check=True).stdout
  screen = [_render(line) for line in out.decode().split("\n")]  # what a terminal shows
  assert "callback epoch 0 state.epoch 1" in screen and "callback epoch 1 state.epoch 2" in screen, screen
  bars = [line for line in screen if "rec/s" in line or "rec]" in line]
  assert bars and all(line.startswith("epoch ") for line in bars), screen
  assert any(line.startswith("epoch 1 (of 0..1)") for line in bars), screen  # counted as the callback counts


def _render(line):
  """A terminal line after carriage returns: later text overwrites from column 0."""
  cells = []
  for part in line.split("\r"):
    cells[:len(part)] = list(part)
  return "".join(cells).rstrip()
