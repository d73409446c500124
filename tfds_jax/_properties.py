"""Assertions that a user's pipeline and train step keep tfds_jax's promises.

Each assertion runs the user's code a few steps in two ways that must agree
(twice, or jitted and eagerly, or saved and restored, ...) and raises
``AssertionError`` naming the first step that differs, the feature (or carry
leaf) and the element, and the state to reproduce that step from.

A *run* is ``num_steps`` steps of ``batch, state = next_batch(source, state,
batch_size)`` and, when a ``train_step`` is given, ``carry, state =
run_steps(train_step, carry, source, state, 1, batch_size)``, recorded step by
step. Each run traces the train step afresh, as a new process would, so a step
that reads Python state (a global counter, say) at trace time shows up.
"""

from __future__ import annotations

import collections
import dataclasses
import importlib
import json
import math
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any, Callable, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from tfds_jax import _features
from tfds_jax._checkpoint import state_from_dict, state_to_dict
from tfds_jax._drivers import run_steps
from tfds_jax._pipeline import Pipeline
from tfds_jax._source import Source, SourceState, as_seed, init, next_batch
from tfds_jax._stages import record_keys
from tfds_jax._stream import Stream

TAG = "tfds_jax.testing/record"
"""The feature :func:`assert_visits_every_record` adds to identify records."""

TrainStep = Callable[[Any, dict], Any]


class _Trace(NamedTuple):
  """A run recorded on the host: per-step batches and carries, and states."""

  batches: list[dict[str, np.ndarray]]  # the batch of each step
  carries: list[Any] | None  # the carry after each step (None without a train step)
  states: list[SourceState]  # the state before each step, and the final one last


# ----------------------------------------------------------------------------- runs


def _num_records(source: Any) -> int:
  if isinstance(source, (Source, Pipeline, Stream)):
    return source.num_records
  if isinstance(source, dict) and source:
    return jax.tree.leaves(source)[0].shape[0]
  raise TypeError(f"Expected a Source, Pipeline or Stream, got {type(source).__name__}; make one"
                  " with tfds_jax.from_arrays, pipeline, load or stream.")


def _in_memory(source: Any) -> bool:
  inner = source.source if isinstance(source, Pipeline) else source
  return not isinstance(inner, Stream)


def _size(source: Any, batch_size: int | None) -> int:
  """The batch size of a run: a pipeline's own, else the one given."""
  if isinstance(source, Pipeline):
    if batch_size not in (None, source.batch_size):
      raise ValueError(f"Expected batch_size={source.batch_size} (the pipeline's) or None, got"
                       f" {batch_size}; make another pipeline for another batch size.")
    return source.batch_size
  n = _num_records(source)
  if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or not 1 <= batch_size <= n:
    raise ValueError(f"Expected batch_size to be an int in [1, {n}] (the number of records), got"
                     f" {batch_size!r}; pass batch_size= (a Pipeline knows its own).")
  return int(batch_size)


def _check_steps(num_steps: Any, what: str = "num_steps") -> int:
  if isinstance(num_steps, bool) or not isinstance(num_steps, (int, np.integer)) or num_steps < 1:
    raise ValueError(f"Expected {what} to be an int >= 1, got {num_steps!r}.")
  return int(num_steps)


def _check_carry(train_step: TrainStep | None, carry: Any) -> None:
  if train_step is None and carry is not None:
    raise ValueError("Expected a train_step with carry=, got carry without one; pass"
                     " train_step=(carry, batch) -> carry, or leave carry out.")
  if train_step is not None and not callable(train_step):
    raise TypeError(f"Expected train_step to be a function (carry, batch) -> carry, got"
                    f" {train_step!r}.")


def _stepper(source: Any, batch_size: int, train_step: TrainStep | None) -> Callable:
  """One step, ``(carry, source, state) -> (batch, carry, state)``.

  The batch comes from ``next_batch`` and the carry from ``run_steps`` (one
  step), in one jitted call for in-memory data. ``run_steps`` gets a new
  function wrapping ``train_step`` at each call of ``_stepper``, so the train
  step is traced afresh, as in a new process.
  """
  if train_step is None:
    def read(carry, source, state):
      batch, state = next_batch(source, state, batch_size)
      return batch, carry, state
    return read
  fresh = lambda carry, batch: train_step(carry, batch)  # noqa: E731

  def step(carry, source, state):
    batch, _ = next_batch(source, state, batch_size)
    carry, state = run_steps(fresh, carry, source, state, 1, batch_size)[:2]
    return batch, carry, state
  return jax.jit(step) if _in_memory(source) else step


_PROGRAMS: collections.OrderedDict = collections.OrderedDict()  # program text -> jitted step
_MAX_PROGRAMS = 16


def _compiled(step: Callable, carry: Any, source: Any, state: SourceState) -> Callable:
  """``step``, or a step traced earlier to the very same program (then already
  compiled): each run traces the train step afresh, and compiles only what is new."""
  if not hasattr(step, "lower"):
    return step  # no train step, or a stream: nothing of the user's to compile here
  text = step.lower(carry, source, state).as_text()
  known = _PROGRAMS.get(text)
  if known is not None:
    _PROGRAMS.move_to_end(text)
    return known
  _PROGRAMS[text] = step
  if len(_PROGRAMS) > _MAX_PROGRAMS:
    _PROGRAMS.popitem(last=False)
  return step


def _fresh_run(source: Any, state: SourceState, num_steps: int, size: int,
               train_step: TrainStep | None, carry: Any) -> _Trace:
  """A run from ``state`` with ``train_step`` traced afresh (compiled only if new)."""
  step = _compiled(_stepper(source, size, train_step), carry, source, state)
  return _run(step, source, state, num_steps, carry, train_step is not None)


_record_keys = jax.jit(record_keys, static_argnums=(3, 4))  # the library's part stays jitted


def _eager_step(source: Any, batch_size: int, train_step: TrainStep | None) -> Callable:
  """One step with the user's code (a pipeline's stages, the train step) run
  op by op under ``jax.disable_jit``; tfds_jax's own reading stays jitted."""

  def step(carry, source, state):
    if isinstance(source, Pipeline):
      order = state.seed if source.shuffle else None
      raw, new = next_batch(source.source, state._replace(seed=order), batch_size)
      keys = _record_keys(state.seed, state.epoch, state.index, batch_size, source.num_records)
      with jax.disable_jit():
        batch = source.stages(keys, raw)
      new = new._replace(seed=state.seed)
    else:
      batch, new = next_batch(source, state, batch_size)
    if train_step is not None:
      with jax.disable_jit():
        carry = train_step(carry, batch)
    return batch, carry, new
  return step


def _run(step: Callable, source: Any, state: SourceState, num_steps: int, carry: Any,
         record_carry: bool) -> _Trace:
  batches, carries, states = [], [], [state]
  for _ in range(num_steps):  # dispatched without waiting; fetched to the host at the end
    batch, carry, state = step(carry, source, state)
    batches.append(batch)
    carries.append(carry if record_carry else None)
    states.append(state)
  batches, carries = _host((batches, carries))
  return _Trace(batches, carries if record_carry else None, states)


def _is_key(x: Any) -> bool:
  return isinstance(x, jax.Array) and jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key)


def _host(tree: Any) -> Any:
  """``tree`` as numpy arrays (typed PRNG keys as their key data), in one transfer."""
  tree = jax.tree.map(lambda x: jax.random.key_data(x) if _is_key(x) else x, tree)
  return jax.tree.map(np.asarray, jax.device_get(tree))


def _from_host(template: Any, leaves: Sequence[np.ndarray]) -> Any:
  """Leaves saved by :func:`_host`, put back into ``template``'s structure."""
  flat, treedef = jax.tree.flatten(template)
  if len(flat) != len(leaves):
    raise ValueError(f"Expected a saved carry of {len(flat)} leaves, got {len(leaves)}; the factory"
                     " must return the carry structure the run saved.")

  def leaf(t, x):
    if _is_key(t):
      return jax.random.wrap_key_data(jnp.asarray(x), impl=jax.random.key_impl(t))
    return jnp.asarray(x)
  return jax.tree.unflatten(treedef, [leaf(t, x) for t, x in zip(flat, leaves)])


# ----------------------------------------------------------------------------- comparison


def _describe_state(state: SourceState) -> str:
  seed = None if state.seed is None else int(state.seed)
  return f"SourceState(epoch={int(state.epoch)}, index={int(state.index)}, seed={seed})"


def _array_difference(a: Any, b: Any, rtol: float, atol: float) -> tuple[str, tuple[int, ...]] | None:
  """How two arrays differ and the index of the first differing element, or None."""
  a, b = np.asarray(a), np.asarray(b)
  if a.shape != b.shape or a.dtype != b.dtype:
    return f"{a.dtype}{list(a.shape)} vs {b.dtype}{list(b.shape)}", (0,) * min(a.ndim, b.ndim)
  if rtol == 0 and atol == 0:
    same = (a == b) | ((a != a) & (b != b))  # NaN equals NaN
  else:
    same = np.isclose(a, b, rtol=rtol, atol=atol, equal_nan=True)
  if np.all(same):
    return None
  where = tuple(int(i) for i in np.argwhere(~np.asarray(same))[0]) if a.ndim else ()
  text = f"at {list(where)}: {a[where]} vs {b[where]}, {int(np.sum(~same))} of {a.size} elements differing"
  return text, where


def _tree_difference(a: Any, b: Any, rtol: float, atol: float, what: str) -> str | None:
  """The first leaf where two pytrees differ, described, or None."""
  if isinstance(a, dict) and isinstance(b, dict):  # a batch: name features as options take them
    a, b = _features.flatten(a), _features.flatten(b)
    if a.keys() != b.keys():
      return (f"the {what} features differ: {sorted(map(_features.name, a))} vs"
              f" {sorted(map(_features.name, b))}")
    for key in a:  # in feature order
      d = _array_difference(a[key], b[key], rtol, atol)
      if d:
        return f"{what} feature {_features.name(key)} {d[0]}"
    return None
  pa, ta = jax.tree_util.tree_flatten_with_path(a)
  pb, tb = jax.tree_util.tree_flatten_with_path(b)
  if ta != tb:
    return f"the {what} structures differ: {ta} vs {tb}"
  for (path, x), (_, y) in zip(pa, pb):
    d = _array_difference(x, y, rtol, atol)
    if d:
      return f"{what} leaf {jax.tree_util.keystr(path) or '(root)'} {d[0]}"
  return None


def _compare(expected: str, a: _Trace, b: _Trace, batch_size: int, rtol: float, atol: float,
             offset: int = 0, fix: str = "") -> None:
  """Raises for the first step where runs ``a`` and ``b`` differ.

  ``b`` may start ``offset`` steps into ``a``.
  """
  for k in range(len(b.batches)):
    i = k + offset
    where = _tree_difference(a.batches[i], b.batches[k], rtol, atol, "batch")
    if where is None and (a.carries is None) != (b.carries is None):
      where = "one run has a train step and the other none"
    elif where is None and a.carries is not None:
      where = _tree_difference(a.carries[i], b.carries[k], rtol, atol, "carry")
      where = where and f"{where}, the batches being equal: the train step differs"
    if where:
      raise AssertionError(
          f"Expected {expected}, got a difference at step {i}: {where}; reproduce it from"
          f" the state before that step, {_describe_state(a.states[i])}: batch, state ="
          f" tfds_jax.next_batch(source, state, {batch_size}){fix}.")
  end_a, end_b = a.states[offset + len(b.batches)], b.states[-1]
  if _describe_state(end_a) != _describe_state(end_b):
    raise AssertionError(f"Expected {expected}, got different states after step"
                         f" {offset + len(b.batches) - 1}: {_describe_state(end_a)} vs"
                         f" {_describe_state(end_b)}; check how the state is advanced.")


def _what(train_step: TrainStep | None) -> str:
  return "batches" if train_step is None else "batches and carries"


# ----------------------------------------------------------------------------- assertions


def assert_deterministic(
    source: Any,
    state: SourceState,
    num_steps: int,
    batch_size: int | None = None,
    *,
    train_step: TrainStep | None = None,
    carry: Any = None,
    fresh_process: str | None = None,
    rtol: float = 0.0,
    atol: float = 0.0,
) -> None:
  """Asserts that the same state in gives the same result out, run after run.

  Runs ``num_steps`` steps from ``state`` twice (tracing ``train_step``
  afresh each time) and, with ``fresh_process``, once more in a new Python
  process, and compares every step's batch and carry.

  Args:
    source: a :class:`Source`, :class:`Pipeline` or :class:`Stream`.
    state: the :class:`SourceState` to start from (any position).
    num_steps: batches to run (static).
    batch_size: records per batch (a pipeline knows its own).
    train_step: optional pure ``(carry, batch) -> carry``; without it the
      batches alone are compared.
    carry: the train step's initial carry (any pytree).
    fresh_process: ``"module:function"`` naming a function that takes no
      arguments and returns ``(source, train_step, carry)`` like those given
      here (``train_step`` and ``carry`` may be None; the carry only gives
      the structure the carry sent from this process is restored into). The
      module must be importable here: the new process gets this process's
      ``sys.path`` and environment, restores ``state`` with
      ``state_from_dict`` and runs the same steps.
    rtol: relative tolerance (default 0: bit for bit).
    atol: absolute tolerance (default 0).

  Raises:
    AssertionError: at the first step whose batch or carry differs, naming
      the feature or carry leaf, the element and the state before that step.

  Example:
    >>> import numpy as np, tfds_jax
    >>> from tfds_jax import testing
    >>> src = tfds_jax.from_arrays({"x": np.arange(10.0)})
    >>> state = tfds_jax.init(src, seed=1, shuffle=True)
    >>> testing.assert_deterministic(src, state, 3, 4, train_step=lambda c, b: c + b["x"].sum(),
    ...                              carry=0.0)
  """
  num_steps = _check_steps(num_steps)
  size = _size(source, batch_size)
  _check_carry(train_step, carry)
  first = _fresh_run(source, state, num_steps, size, train_step, carry)
  second = _fresh_run(source, state, num_steps, size, train_step, carry)
  _compare(f"the same {_what(train_step)} from the same state, run twice", first, second, size, rtol,
           atol, fix="; look for randomness or Python state the run reads besides the state")
  if fresh_process is not None:
    child = _in_fresh_process(fresh_process, source, state, carry, num_steps, size)
    _compare(f"the same {_what(train_step)} from the same state in a fresh process ({fresh_process})",
             first, child, size, rtol, atol,
             fix="; look for what the run reads from its process (a global counter, time,"
                 " os.environ, an unseeded generator)")


def assert_resumes(
    source: Any,
    state: SourceState,
    num_steps: int,
    batch_size: int | None = None,
    *,
    train_step: TrainStep | None = None,
    carry: Any = None,
    restore_at: int | None = None,
    save: Callable[[Any, SourceState], dict] | None = None,
    restore: Callable[[Any, dict], SourceState] | None = None,
    fresh_process: str | None = None,
    rtol: float = 0.0,
    atol: float = 0.0,
) -> None:
  """Asserts that a run saved after ``restore_at`` steps and restored continues exactly.

  Runs ``num_steps`` steps uninterrupted. Separately, after ``restore_at``
  steps the state is saved with ``save`` (default :func:`state_to_dict`),
  written with ``np.savez`` and read back, restored with ``restore`` (default
  :func:`state_from_dict`), the carry is written and read back the same way,
  and the remaining steps run in a new call (or, with ``fresh_process``, in a
  new Python process): every step must equal the uninterrupted run's.

  Args:
    source: a :class:`Source`, :class:`Pipeline` or :class:`Stream`.
    state: the :class:`SourceState` to start from (any position).
    num_steps: total batches to run (static).
    batch_size: records per batch (a pipeline knows its own).
    train_step: optional pure ``(carry, batch) -> carry``.
    carry: the train step's initial carry (any pytree of arrays).
    restore_at: steps before the save, in ``[0, num_steps)``; default
      ``num_steps // 2``.
    save: your own ``save(source, state) -> dict`` of arrays (default
      ``tfds_jax.state_to_dict``).
    restore: your own ``restore(source, saved_dict) -> state`` (default
      ``tfds_jax.state_from_dict``).
    fresh_process: ``"module:function"`` returning ``(source, train_step,
      carry)``, as for :func:`assert_deterministic`; the new process restores
      with ``state_from_dict`` (``save`` and ``restore`` must be left out).
    rtol: relative tolerance (default 0: bit for bit).
    atol: absolute tolerance (default 0).

  Raises:
    AssertionError: if the restored state differs from the saved one, or at
      the first step after the restore that differs from the uninterrupted
      run.

  Example:
    >>> import numpy as np, tfds_jax
    >>> from tfds_jax import testing
    >>> src = tfds_jax.from_arrays({"x": np.arange(10.0)})
    >>> testing.assert_resumes(src, tfds_jax.init(src, seed=3, shuffle=True), 6, 4,
    ...                        train_step=lambda c, b: c * 0.5 + b["x"].sum(), carry=np.float32(0))
  """
  num_steps = _check_steps(num_steps)
  size = _size(source, batch_size)
  _check_carry(train_step, carry)
  restore_at = num_steps // 2 if restore_at is None else restore_at
  if isinstance(restore_at, bool) or not isinstance(restore_at, (int, np.integer)) or not 0 <= restore_at < num_steps:
    raise ValueError(f"Expected restore_at in [0, {num_steps}) (steps before the save), got"
                     f" {restore_at!r}; pass a step before the last.")
  if fresh_process is not None and (save is not None or restore is not None):
    raise ValueError("Expected either fresh_process= or your own save=/restore=, got both; the fresh"
                     " process restores with state_from_dict.")
  whole = _fresh_run(source, state, num_steps, size, train_step, carry)
  saved_state = whole.states[restore_at]
  saved_carry = whole.carries[restore_at - 1] if train_step is not None and restore_at else carry
  what = (f"a run saved after {restore_at} of {num_steps} steps and restored"
          f"{' in a fresh process (' + fresh_process + ')' if fresh_process else ''} to continue"
          f" exactly as the uninterrupted run")
  if fresh_process is not None:
    resumed = _in_fresh_process(fresh_process, source, saved_state, saved_carry, num_steps - restore_at, size)
  else:
    restored, restored_carry = _save_and_restore(source, saved_state, saved_carry, carry,
                                                 save or state_to_dict, restore or state_from_dict)
    if _describe_state(restored) != _describe_state(saved_state):
      raise AssertionError(
          f"Expected the restored state to equal the saved one, got {_describe_state(restored)} for"
          f" {_describe_state(saved_state)} (saved after {restore_at} steps); restore every field"
          " (epoch, index and seed), e.g. with tfds_jax.state_from_dict.")
    resumed = _fresh_run(source, restored, num_steps - restore_at, size, train_step, restored_carry)
  _compare(what, whole, resumed, size, rtol, atol, offset=restore_at,
           fix="; check what the save and restore leave out (the seed, the carry, Python state)")


def _save_and_restore(source: Any, state: SourceState, carry: Any, template: Any,
                      save: Callable, restore: Callable) -> tuple[SourceState, Any]:
  """``state`` (and ``carry``, unless None) written to files and read back, as a
  checkpoint would be."""
  with tempfile.TemporaryDirectory() as tmp:
    np.savez(Path(tmp) / "state.npz", **{k: np.asarray(v) for k, v in save(source, state).items()})
    restored = restore(source, dict(np.load(Path(tmp) / "state.npz")))
    if carry is None:
      return restored, None
    leaves = jax.tree.leaves(_host(carry))
    np.savez(Path(tmp) / "carry.npz", *leaves)
    with np.load(Path(tmp) / "carry.npz") as f:
      return restored, _from_host(template, [f[f"arr_{i}"] for i in range(len(leaves))])


def assert_jit_equals_eager(
    source: Any,
    state: SourceState,
    num_steps: int,
    batch_size: int | None = None,
    *,
    train_step: TrainStep | None = None,
    carry: Any = None,
    rtol: float = 0.0,
    atol: float = 0.0,
) -> None:
  """Asserts that your code gives the same result jitted and op by op.

  The jitted run is :func:`assert_deterministic`'s; the eager one runs a
  pipeline's stages and the train step under ``jax.disable_jit()`` (the
  library's own reading stays jitted: it is tested on its own). A step that
  reads Python state at trace time, or depends on XLA's fusion, shows up.

  Args:
    source: a :class:`Source`, :class:`Pipeline` or :class:`Stream`.
    state: the :class:`SourceState` to start from.
    num_steps: batches to run.
    batch_size: records per batch (a pipeline knows its own).
    train_step: optional pure ``(carry, batch) -> carry``.
    carry: the train step's initial carry.
    rtol: relative tolerance (default 0: bit for bit; float steps compiled
      by XLA may round differently, so pass e.g. ``1e-5`` for them).
    atol: absolute tolerance (default 0).

  Raises:
    AssertionError: at the first step that differs.

  Example:
    >>> import numpy as np, tfds_jax
    >>> from tfds_jax import testing
    >>> src = tfds_jax.from_arrays({"image": np.zeros((8, 4, 4, 1), np.uint8)})
    >>> pipe = tfds_jax.pipeline(src, tfds_jax.random_flip(), batch_size=4, shuffle=True)
    >>> testing.assert_jit_equals_eager(pipe, tfds_jax.init(pipe, seed=0), 2)
  """
  num_steps = _check_steps(num_steps)
  size = _size(source, batch_size)
  _check_carry(train_step, carry)
  record = train_step is not None
  jitted = _fresh_run(source, state, num_steps, size, train_step, carry)
  eager = _run(_eager_step(source, size, train_step), source, state, num_steps, carry, record)
  _compare(f"the same {_what(train_step)} jitted and eagerly (jax.disable_jit)", jitted, eager, size,
           rtol, atol, fix="; look for Python state read at trace time, or pass rtol= for float rounding")


def assert_vmap_equals_loop(
    source: Any,
    state: SourceState,
    num_steps: int,
    batch_size: int | None = None,
    *,
    seeds: Sequence[int] | jax.Array,
    train_step: TrainStep | None = None,
    carry: Any = None,
    rtol: float = 0.0,
    atol: float = 0.0,
) -> None:
  """Asserts that runs vmapped over seeds equal the runs one seed at a time.

  Every run starts at ``state``'s position with its seed replaced by one of
  ``seeds``; the vmapped run (one jitted ``vmap`` per step, the carry
  broadcast to every seed) must give, for seed ``k``, run ``k`` of a loop.

  Args:
    source: an in-memory :class:`Source` or :class:`Pipeline` (a stream
      reads outside ``jit`` and cannot be vmapped).
    state: the :class:`SourceState` whose position every run starts at; it
      must carry a seed (shuffled, or a pipeline's).
    num_steps: batches to run.
    batch_size: records per batch (a pipeline knows its own).
    seeds: the seeds to vmap over (ints in ``[0, 2**32)`` or a uint32 array).
    train_step: optional pure ``(carry, batch) -> carry``.
    carry: the initial carry of every run.
    rtol: relative tolerance (default 0; a float step's batched matmuls may
      round differently: pass e.g. ``1e-5``).
    atol: absolute tolerance (default 0).

  Raises:
    AssertionError: naming the seed and the first step that differs.

  Example:
    >>> import numpy as np, tfds_jax
    >>> from tfds_jax import testing
    >>> src = tfds_jax.from_arrays({"x": np.arange(10)})
    >>> state = tfds_jax.init(src, seed=0, shuffle=True)
    >>> testing.assert_vmap_equals_loop(src, state, 3, 4, seeds=[0, 1, 2])
  """
  num_steps = _check_steps(num_steps)
  size = _size(source, batch_size)
  _check_carry(train_step, carry)
  if not _in_memory(source):
    raise ValueError("Expected an in-memory Source or Pipeline to vmap over, got a stream (it reads"
                     " files outside jit); check the stream with the other assertions, or load the"
                     " split eagerly.")
  if state.seed is None:
    raise ValueError("Expected a state with a seed to vmap over seeds, got an unshuffled one"
                     " (seed=None); make it with init(source, seed=..., shuffle=True).")
  seed_list = [as_seed(int(s)) for s in np.asarray(seeds, dtype=np.uint64).reshape(-1)]
  if not seed_list:
    raise ValueError("Expected at least one seed, got none; pass seeds=[0, 1, 2].")
  record = train_step is not None
  states = jax.tree.map(lambda *xs: jnp.stack(xs), *[state._replace(seed=s) for s in seed_list])
  carries = jax.tree.map(lambda x: jnp.stack([jnp.asarray(x)] * len(seed_list)), carry)
  step = _compiled(_stepper(source, size, train_step), carry, source, state)
  vmapped = jax.jit(jax.vmap(_stepper(source, size, train_step), in_axes=(0, None, 0)))
  many = _run(_compiled(vmapped, carries, source, states), source, states, num_steps, carries, record)
  for k, seed in enumerate(seed_list):
    one = _run(step, source, state._replace(seed=seed), num_steps, carry, record)
    pick = lambda tree: jax.tree.map(lambda x: x[k], tree)  # noqa: E731
    replica = _Trace([pick(b) for b in many.batches], None if not record else [pick(c) for c in many.carries],
                     [pick(s) for s in many.states])
    _compare(f"replica {k} (seed {int(seed)}) of the vmapped run to equal the run with that seed",
             one, replica, size, rtol, atol, fix="; a step must not mix values across the vmapped axis")


def _with_batch_size(source: Any, batch_size: int) -> Any:
  if isinstance(source, Pipeline):
    _size(source.source, batch_size)  # in range
    return dataclasses.replace(source, batch_size=batch_size)
  return source


def assert_batch_size_invariant(
    source: Any,
    state: SourceState,
    batch_sizes: Sequence[int],
    *,
    num_positions: int | None = None,
    rtol: float = 0.0,
    atol: float = 0.0,
) -> None:
  """Asserts that every record comes out the same whatever the batch size.

  Reads ``num_positions`` positions from ``state`` in batches of each size
  and compares them record by record. tfds_jax keys a record's randomness by
  its position, so this holds for its stages; a stage that draws one key per
  batch, or computes over the batch, breaks it.

  Args:
    source: a :class:`Source`, :class:`Pipeline` (remade with each batch
      size, its stages unchanged) or :class:`Stream`.
    state: the :class:`SourceState` to start from.
    batch_sizes: at least two batch sizes, each in ``[1, num_records]``.
    num_positions: records to compare (default: one epoch).
    rtol: relative tolerance (default 0).
    atol: absolute tolerance (default 0).

  Raises:
    AssertionError: naming the first position, feature and batch sizes that
      differ.

  Example:
    >>> import numpy as np, tfds_jax
    >>> from tfds_jax import testing
    >>> src = tfds_jax.from_arrays({"image": np.arange(640, dtype=np.uint8).reshape(10, 8, 8, 1)})
    >>> pipe = tfds_jax.pipeline(src, tfds_jax.random_flip(), batch_size=4, shuffle=True)
    >>> testing.assert_batch_size_invariant(pipe, tfds_jax.init(pipe, seed=5), [4, 10])
  """
  n = _num_records(source)
  sizes = [int(b) for b in batch_sizes]
  if len(sizes) < 2:
    raise ValueError(f"Expected at least two batch sizes to compare, got {batch_sizes!r}; pass e.g."
                     " [3, 4].")
  positions = n if num_positions is None else _check_steps(num_positions, "num_positions")
  records = []
  for b in sizes:
    sized = _with_batch_size(source, b)
    size = _size(sized, b)
    trace = _run(_stepper(sized, size, None), sized, state, math.ceil(positions / size), None, False)
    flat = [_features.flatten(batch) for batch in trace.batches]
    records.append({k: np.concatenate([batch[k] for batch in flat])[:positions] for k in flat[0]})
  start = int(state.epoch) * n + int(state.index)
  for b, got in zip(sizes[1:], records[1:]):
    if got.keys() != records[0].keys():
      raise AssertionError(f"Expected the same features whatever the batch size, got"
                           f" {sorted(map(_features.name, got))} at batch size {b} and"
                           f" {sorted(map(_features.name, records[0]))} at {sizes[0]}.")
    for key in records[0]:
      d = _array_difference(records[0][key], got[key], rtol, atol)
      if d:
        p = start + (d[1][0] if d[1] else 0)
        raise AssertionError(
            f"Expected every record to be the same whatever the batch size, got a difference in"
            f" feature {_features.name(key)} at position {p} (epoch {p // n}, index {p % n}) between batch size"
            f" {sizes[0]} (step {(p - start) // sizes[0]}) and {b} (step {(p - start) // b}):"
            f" {d[0]}; reproduce from {_describe_state(state)} with each batch size. Key each"
            " record by its own key (a stage gets one per record) and never compute across the"
            " batch.")


def assert_sharding_invariant(
    source: Any,
    state: SourceState,
    num_steps: int,
    batch_size: int | None = None,
    *,
    mesh: jax.sharding.Mesh,
    axes: str | Sequence[str] | None = None,
    rtol: float = 0.0,
    atol: float = 0.0,
) -> None:
  """Asserts that batches split over a mesh's devices equal the unsplit ones.

  The source is replicated on the mesh's devices and each batch is read with
  ``next_batch(..., sharding=NamedSharding(mesh, PartitionSpec(axes)))``,
  then compared with the batch read on one device. A stage keyed per batch
  breaks it: under the sharding each device computes only its own rows.

  Args:
    source: a :class:`Source`, :class:`Pipeline` or :class:`Stream`.
    state: the :class:`SourceState` to start from.
    num_steps: batches to compare.
    batch_size: records per batch, a multiple of the mesh's size (a pipeline
      knows its own).
    mesh: the ``jax.sharding.Mesh`` to split batches over.
    axes: the mesh axis (or axes) the batch axis is split over (default:
      all of them).
    rtol: relative tolerance (default 0).
    atol: absolute tolerance (default 0).

  Raises:
    AssertionError: at the first step that differs.

  Example:
    >>> import jax, numpy as np, tfds_jax
    >>> from tfds_jax import testing
    >>> src = tfds_jax.from_arrays({"x": np.arange(12)})
    >>> mesh = jax.sharding.Mesh(np.array(jax.devices()[:2]), ("data",))
    >>> testing.assert_sharding_invariant(src, tfds_jax.init(src), 3, 4, mesh=mesh)
  """
  num_steps = _check_steps(num_steps)
  size = _size(source, batch_size)
  axes = tuple(mesh.axis_names) if axes is None else (axes,) if isinstance(axes, str) else tuple(axes)
  sharding = NamedSharding(mesh, P(axes))
  placed = jax.device_put(source, NamedSharding(mesh, P())) if _in_memory(source) else source
  plain = _run(_stepper(source, size, None), source, state, num_steps, None, False)

  def sharded_step(carry, source, state):
    batch, state = next_batch(source, state, size, sharding=sharding)
    return batch, carry, state
  split = _run(sharded_step, placed, state, num_steps, None, False)
  _compare(f"batches split over axes {axes} of mesh {dict(mesh.shape)} to equal"
           " the batches read on one device", plain, split, size, rtol, atol,
           fix="; key each record by its own key and never compute across the batch")


def assert_visits_every_record(
    source: Any,
    state: SourceState | None = None,
    batch_size: int | None = None,
    *,
    num_epochs: int = 2,
) -> None:
  """Asserts that each epoch, through your pipeline, visits every record once.

  Records are told apart by an added feature, ``"tfds_jax.testing/record"``
  (the record's index), which your stages must pass through (``{**batch,
  ...}``). A stream cannot carry it, so its records are told apart by their
  bytes, and a pipeline over a stream is checked over an in-memory copy of
  the stream's records as well (read once, in order: use a small split).
  Runs from ``state`` through the end of epoch ``state.epoch + num_epochs -
  1`` (the epoch it starts in may be partial: its records must be distinct).

  Args:
    source: a :class:`Source`, :class:`Pipeline` or :class:`Stream`.
    state: the :class:`SourceState` to start from (default ``init(source)``).
    batch_size: records per batch (a pipeline knows its own).
    num_epochs: epochs to check, at least 1.

  Raises:
    AssertionError: naming the epoch, the record seen twice or never, and
      the positions to reproduce it at.

  Example:
    >>> import numpy as np, tfds_jax
    >>> from tfds_jax import testing
    >>> src = tfds_jax.from_arrays({"x": np.zeros(10)})
    >>> testing.assert_visits_every_record(src, tfds_jax.init(src, seed=2, shuffle=True), 4)
  """
  num_epochs = _check_steps(num_epochs, "num_epochs")
  state = init(source) if state is None else state
  size = _size(source, batch_size)
  n = _num_records(source)
  inner = source.source if isinstance(source, Pipeline) else source
  if isinstance(inner, Stream):
    order = state.seed if not isinstance(source, Pipeline) or source.shuffle else None
    records = _read_all(inner, size)
    _check_visits(inner, state._replace(seed=order), size, num_epochs, _digests, _digests(records))
    if not isinstance(source, Pipeline):
      return
    source = dataclasses.replace(source, source=Source(data=jax.tree.map(jnp.asarray, records)))
  _check_visits(_tagged(source, n), state, size, num_epochs, _tag, np.arange(n))


def _tagged(source: Any, n: int) -> Any:
  """``source`` with one more feature, :data:`TAG`: each record's index. A source
  without stages needs no other feature: the order does not depend on them."""
  if isinstance(source, Pipeline):
    data = source.source.data
    if TAG in data:
      raise ValueError(f"Expected a source without a feature named {TAG!r}, got one; rename it.")
    ids = jax.device_put(jnp.arange(n, dtype=jnp.int32), jax.tree.leaves(data)[0].sharding)
    return dataclasses.replace(source, source=dataclasses.replace(source.source, data={**data, TAG: ids}))
  data = source.data if isinstance(source, Source) else source
  return Source(data={TAG: jax.device_put(jnp.arange(n, dtype=jnp.int32), jax.tree.leaves(data)[0].sharding)})


def _tag(batch: dict) -> np.ndarray:
  if TAG not in batch:
    raise AssertionError(
        f"Expected your stages to pass through every feature (tfds_jax.testing adds {TAG!r} to"
        f" tell records apart), got a batch without it (features {sorted(batch)}); return"
        " {**batch, 'image': new_image} from a stage instead of a new dict.")
  return np.asarray(batch[TAG])


def _read_all(stream: Stream, batch_size: int) -> dict[str, np.ndarray]:
  """Every record of a stream, in order, on the host."""
  state, n, parts = init(stream), stream.num_records, []
  for _ in range(math.ceil(n / batch_size)):
    batch, state = next_batch(stream, state, batch_size)
    parts.append(_host(batch))
  return jax.tree.map(lambda *xs: np.concatenate(xs)[:n], *parts)


def _digests(batch: dict) -> np.ndarray:
  """One bytes string per record of a batch: all its features' bytes."""
  flat = _features.flatten(batch)
  rows = [np.ascontiguousarray(np.asarray(flat[k])).reshape(len(flat[k]), -1).view(np.uint8)
          for k in sorted(flat)]
  return np.array([b"".join(r[i].tobytes() for r in rows) for i in range(len(rows[0]))], dtype=object)


def _check_visits(source: Any, state: SourceState, size: int, num_epochs: int,
                  ids_of: Callable[[dict], np.ndarray], every: np.ndarray) -> None:
  """Runs from ``state`` to the end of epoch ``state.epoch + num_epochs - 1`` and
  checks each epoch's record ids (``ids_of(batch)``) against ``every`` record's."""
  n = len(every)
  start = int(state.epoch) * n + int(state.index)
  end = (int(state.epoch) + num_epochs) * n
  steps = math.ceil((end - start) / size)
  trace = _run(_stepper(source, size, None), source, state, steps, None, False)
  ids = np.concatenate([ids_of(b) for b in trace.batches])[:end - start]
  expected = collections.Counter(every.tolist())
  for epoch in range(int(state.epoch), int(state.epoch) + num_epochs):
    lo = max(epoch * n, start)  # the epoch the run starts in may be partial
    seen = ids[lo - start:(epoch + 1) * n - start]
    counts = collections.Counter(seen.tolist())
    extra = [r for r, c in counts.items() if c > expected[r]]
    missing = [r for r, c in expected.items() if c > counts[r]] if lo == epoch * n else []
    if not extra and not missing:
      continue
    if extra:
      at = [lo + int(i) for i in np.flatnonzero(seen == extra[0])]
      detail = f" ({_record_name(extra[0])} at positions {at})"
    else:
      detail = f" ({_record_name(missing[0])} never)"
    raise AssertionError(
        f"Expected epoch {epoch} (positions {lo} to {(epoch + 1) * n - 1}) to visit every record"
        f" once, got {len(extra)} record(s) seen too often and {len(missing)} never seen{detail};"
        f" reproduce from {_describe_state(state)} with batch size {size} (position p is in step"
        f" (p - {start}) // {size}).")
  end_state = trace.states[-1]
  want = divmod(start + steps * size, n)
  if (int(end_state.epoch), int(end_state.index)) != want:
    raise AssertionError(f"Expected the state after {steps} steps of {size} from {_describe_state(state)}"
                         f" at epoch {want[0]}, index {want[1]}, got {_describe_state(end_state)};"
                         " advance the state by the batch size each step.")


def _record_name(record: Any) -> str:
  return "a record's bytes" if isinstance(record, bytes) else f"record {record}"


# ----------------------------------------------------------------------------- fresh processes


def _in_fresh_process(factory: str, source: Any, state: SourceState, carry: Any, num_steps: int,
                      batch_size: int) -> _Trace:
  """Runs ``num_steps`` steps from ``state`` and ``carry`` (None: no train step) in a
  new Python process whose ``factory`` builds the source and train step."""
  module, _, name = factory.partition(":")
  if not module or not name:
    raise ValueError(f"Expected fresh_process='module:function', got {factory!r}; name a function"
                     " that returns (source, train_step, carry).")
  with tempfile.TemporaryDirectory() as tmp:
    tmp = Path(tmp)
    np.savez(tmp / "state.npz", **{k: np.asarray(v) for k, v in state_to_dict(source, state).items()})
    np.savez(tmp / "carry.npz", *([] if carry is None else jax.tree.leaves(_host(carry))))
    (tmp / "run.json").write_text(json.dumps({"factory": factory, "num_steps": num_steps,
                                              "batch_size": batch_size, "carry": carry is not None}))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
    code = "import sys; from tfds_jax import _properties; _properties._child(sys.argv[1])"
    done = subprocess.run([sys.executable, "-c", code, str(tmp)], env=env, capture_output=True, text=True)
    if done.returncode:
      raise RuntimeError(f"Expected the fresh process to run {factory}, got exit code {done.returncode}:"
                         f"\n{done.stderr[-3000:]}\ncheck that {module!r} is importable here and"
                         f" {name}() returns (source, train_step, carry).")
    meta = json.loads((tmp / "out.json").read_text())
    with np.load(tmp / "out.npz") as f:
      batches = [_features.unflatten({tuple(k): f[f"b{s}_{i}"] for i, k in enumerate(meta["features"])})
                 for s in range(num_steps)]
      carries = None
      if meta["carry_leaves"] is not None:
        leaves = [[f[f"c{s}_{i}"] for i in range(meta["carry_leaves"])] for s in range(num_steps)]
        treedef = jax.tree.structure(_host(carry))
        carries = [jax.tree.unflatten(treedef, c) if treedef.num_leaves == len(c) else c for c in leaves]
  states = [SourceState(np.int32(e), np.int32(i), None if s is None else np.uint32(s))
            for e, i, s in meta["states"]]
  return _Trace(batches, carries, states)


def _child(tmp: str) -> None:
  """The fresh process: builds the run with the factory, restores, runs, saves."""
  tmp = Path(tmp)
  meta = json.loads((tmp / "run.json").read_text())
  module, _, name = meta["factory"].partition(":")
  source, train_step, carry = getattr(importlib.import_module(module), name)()
  state = state_from_dict(source, dict(np.load(tmp / "state.npz")))
  if meta["carry"] and train_step is not None:
    with np.load(tmp / "carry.npz") as f:
      carry = _from_host(carry, [f[f"arr_{i}"] for i in range(len(f.files))])
  record = train_step is not None
  trace = _run(_stepper(source, meta["batch_size"], train_step), source, state, meta["num_steps"],
               carry, record)
  flat = [_features.flatten(batch) for batch in trace.batches]
  features = [list(k) for k in flat[0]]
  arrays = {f"b{s}_{i}": batch[tuple(k)] for s, batch in enumerate(flat) for i, k in enumerate(features)}
  if record:
    arrays.update({f"c{s}_{i}": x for s, c in enumerate(trace.carries) for i, x in enumerate(jax.tree.leaves(c))})
  np.savez(tmp / "out.npz", **arrays)
  states = [(int(s.epoch), int(s.index), None if s.seed is None else int(s.seed)) for s in trace.states]
  leaves = len(jax.tree.leaves(trace.carries[0])) if record else None
  (tmp / "out.json").write_text(json.dumps({"features": features, "carry_leaves": leaves, "states": states}))
