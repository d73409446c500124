"""Epoch drivers: run a train step over many batches inside one ``jit``.

:func:`run_steps` runs ``num_steps`` steps in one ``lax.fori_loop``;
:func:`run_epochs` runs whole epochs, each in jitted ``lax.while_loop`` calls,
with a callback between epochs (outside ``jit``: log, evaluate, save) and a
progress bar. Both take the data as an argument, never closing over it, and
both give exactly the batches ``next_batch`` would, so a run split into
calls, chunks or resumed from a saved state is the same run.

A step returns its new carry, or with ``metrics=`` set, ``(carry, metrics)``
(the Flax style ``return state, metrics``); the metrics of every step are
then stacked (``"stack"``), or summed or averaged over the steps of the call
(:func:`run_steps`) or of each epoch (:func:`run_epochs`), inside the loop.

Over a :class:`Stream` (or a pipeline over one) the batches are read from
disk, so the loop runs in Python and only ``train_step`` is jitted.
"""

from __future__ import annotations

import functools
import math
import sys
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
import tqdm

from tfds_jax import _source
from tfds_jax._pipeline import Pipeline
from tfds_jax._source import Source, SourceState
from tfds_jax._types import Batch

TrainStep = Callable[[Any, Batch], Any]
METRICS = (None, "stack", "mean", "sum")


def run_steps(
    train_step: TrainStep,
    carry: Any,
    source: Any,
    state: SourceState,
    num_steps: int,
    batch_size: int | None = None,
    *,
    metrics: str | None = None,
    fused: bool = True,
    sharding: jax.sharding.NamedSharding | None = None,
) -> tuple[Any, SourceState] | tuple[Any, SourceState, Any]:
  """Runs ``carry = train_step(carry, batch)`` for ``num_steps`` batches.

  In one jitted ``lax.fori_loop`` for in-memory sources and pipelines (and
  inlined when called inside your own ``jit`` or ``vmap``), else a Python loop
  over a stream's batches with ``train_step`` jitted.

  Args:
    train_step: a pure ``(carry, batch) -> carry`` (or ``-> (carry,
      metrics)`` with ``metrics`` set), defined once (it is a static argument:
      a new function object compiles again). The carry it returns must keep
      the structure, shapes and dtypes of the one it gets.
    carry: any pytree (parameters, optimizer state, ...).
    source: a :class:`Source`, :class:`Pipeline` or :class:`Stream`.
    state: the :class:`SourceState` to start from.
    num_steps: number of batches, a static int >= 0.
    batch_size: records per batch (a pipeline knows its own).
    metrics: None (the step returns the carry), or how to collect the metrics
      pytree a step returns as ``(carry, metrics)``: ``"stack"`` (every leaf
      gains a leading ``[num_steps]`` axis), ``"mean"`` or ``"sum"`` (over the
      steps, accumulated in the loop; means in at least float32).
    fused: run the steps inside one loop (default). False runs one jitted
      call (``next_batch`` and ``train_step``) per batch from Python, with the
      same result: for steps XLA compiles worse inside a loop body, such as
      convolutions on XLA:CPU (jax-ml/jax#12868; see BENCHMARKS.md).
    sharding: passed to :func:`next_batch`: a ``NamedSharding`` splitting each
      batch over the devices of a mesh.

  Returns:
    ``(carry, state)`` after the last step; ``(carry, state, metrics)`` with
    ``metrics`` set.

  Raises:
    TypeError: ``num_steps`` is not an int; ``train_step`` is not a function,
      or returns a carry of another structure, shape or dtype, or not a
      ``(carry, metrics)`` pair with ``metrics`` set.
    ValueError: ``num_steps < 0`` or an unknown ``metrics``; a concrete state
      outside the source (as for :func:`next_batch`; a traced one, inside your
      own ``jit``, is read modulo the source's size).

  Example:
    >>> import numpy as np, tfds_jax
    >>> src = tfds_jax.from_arrays({"x": np.arange(10.0)})
    >>> step = lambda total, batch: total + batch["x"].sum()
    >>> total, state = tfds_jax.run_steps(step, 0.0, src, tfds_jax.init(src), 5, 4)
    >>> float(total), int(state.epoch), int(state.index)
    (90.0, 2, 0)
    >>> step = lambda total, batch: (total + batch["x"].sum(), {"max": batch["x"].max()})
    >>> total, state, m = tfds_jax.run_steps(step, 0.0, src, tfds_jax.init(src), 3, 4, metrics="stack")
    >>> m["max"].tolist()
    [3.0, 7.0, 9.0]
  """
  _check_count("num_steps", num_steps)
  _check_metrics(metrics)
  _check_callable("train_step", train_step, "a function (carry, batch) -> carry")
  state = _checked_state(source, state)
  if not _in_memory(source) or not fused:
    carry, state, acc = _python_steps(train_step, carry, source, state, num_steps, batch_size,
                                      metrics, sharding, None, 0, num_steps)
    acc = _finish(metrics, acc, num_steps, lambda: _metrics_spec(
        train_step, carry, source, state, batch_size, metrics, sharding))
  else:
    carry, state, acc = _run_steps(train_step, carry, source, state, num_steps, batch_size,
                                   metrics, sharding)
    acc = _finish(metrics, acc, num_steps, None)
  acc = _trim(metrics, acc, num_steps)
  return (carry, state) if metrics is None else (carry, state, acc)


@functools.partial(jax.jit, static_argnames=("train_step", "num_steps", "batch_size", "metrics",
                                             "sharding"))
def _run_steps(train_step, carry, source, state, num_steps, batch_size, metrics, sharding):
  step = _checked_step(train_step, carry, source, state, batch_size, metrics, sharding)
  acc = _empty(metrics, step.metrics, num_steps)

  def body(i, loop):
    carry, state, acc = loop
    batch, state = _source.next_batch(source, state, batch_size, sharding=sharding)
    carry, m = step(carry, batch)
    return carry, state, _accumulate(metrics, acc, m, i)

  return jax.lax.fori_loop(0, num_steps, body, (carry, state, acc))


@functools.partial(jax.jit, static_argnames=("train_step", "batch_size", "metrics", "sharding"))
def _one_step(train_step, carry, source, state, batch_size, metrics, sharding):
  """One ``next_batch`` and step in one jitted call, no loop around them (XLA:CPU compiles
  some steps, convolutions, worse inside a loop body: jax-ml/jax#12868)."""
  step = _checked_step(train_step, carry, source, state, batch_size, metrics, sharding)
  batch, state = _source.next_batch(source, state, batch_size, sharding=sharding)
  carry, m = step(carry, batch)
  return carry, state, m


def _python_steps(train_step, carry, source, state, num_steps, batch_size, metrics, sharding, acc,
                  offset, length):
  """Steps from Python (streams, ``fused=False``), one jitted call per batch; metrics go to
  ``acc[offset:]`` (allocated for ``length`` steps when None)."""
  for i in range(num_steps):
    if _in_memory(source):
      carry, state, m = _one_step(train_step, carry, source, state, batch_size, metrics, sharding)
    else:
      batch, state = _source.next_batch(source, state, batch_size, sharding=sharding)
      carry, m = _step_on_batch(train_step, metrics, carry, batch)
    if metrics is not None:
      if acc is None:
        acc = _empty_like(metrics, m, length)
      acc = _accumulate_jit(metrics, acc, m, offset + i)
  return carry, state, acc


def _step_on_batch(train_step, metrics, carry, batch):
  spec = jax.eval_shape(_jit(train_step), carry, batch)  # traced once, then cached by jit
  _check_output(spec, carry, metrics)
  out = _jit(train_step)(carry, batch)
  return out if metrics is not None else (out, None)


def run_epochs(
    train_step: TrainStep,
    carry: Any,
    source: Any,
    state: SourceState,
    num_epochs: int,
    batch_size: int | None = None,
    *,
    metrics: str | None = None,
    on_epoch_end: Callable[..., None] | None = None,
    progress: bool = True,
    fused: bool = True,
    sharding: jax.sharding.NamedSharding | None = None,
) -> tuple[Any, SourceState] | tuple[Any, SourceState, list]:
  """Runs steps until ``state.epoch`` reaches ``num_epochs``.

  ``num_epochs`` is the epoch to stop at, not a count, so a run restored
  mid-epoch from a checkpoint and called again with the same ``num_epochs``
  finishes the same schedule. An epoch ends with the batch that crosses into
  the next one (batches never shrink: its last records are the next epoch's
  first). Call it outside ``jit`` (it runs a Python loop with a progress bar
  and callbacks); inside your own ``jit``, use :func:`run_steps`.

  Args:
    train_step: a pure ``(carry, batch) -> carry`` (or ``-> (carry,
      metrics)`` with ``metrics`` set), defined once.
    carry: any pytree.
    source: a :class:`Source`, :class:`Pipeline` or :class:`Stream`.
    state: the concrete :class:`SourceState` to start from.
    num_epochs: stop once ``state.epoch >= num_epochs`` (an int >= 0).
    batch_size: records per batch (a pipeline knows its own).
    metrics: as for :func:`run_steps`, per epoch: ``"stack"`` gives each
      epoch's ``[steps_in_epoch, ...]`` metrics, ``"mean"`` / ``"sum"`` their
      mean or sum over the epoch's steps (a run restored mid-epoch counts that
      epoch's remaining steps).
    on_epoch_end: called as ``on_epoch_end(epoch, carry, state)`` after each
      epoch (``on_epoch_end(epoch, carry, state, metrics)`` with ``metrics``
      set), outside ``jit``: evaluate, log, save a checkpoint. ``epoch`` is the
      epoch that ended, counted from 0 as ``state.epoch`` counts, and the
      progress bar shows the same number. The bar is cleared while it runs,
      so what it prints never lands on the bar's line.
    progress: show a progress bar (records, on stderr) once a run takes
      more than a second; an epoch then runs in about 20 jitted calls instead
      of one, giving the same result.
    fused: as for :func:`run_steps`: False runs one jitted call per batch.
    sharding: passed to :func:`next_batch`, as for :func:`run_steps`.

  Returns:
    ``(carry, state)`` at the end of the last epoch; with ``metrics`` set,
    ``(carry, state, history)``, ``history`` holding one metrics pytree per
    epoch run.

  Raises:
    TypeError: the state is traced (called inside ``jit`` or ``vmap``),
      ``num_epochs`` is not an int, ``train_step`` or ``on_epoch_end`` is not
      a function, or ``train_step`` returns another structure (as for
      :func:`run_steps`).
    ValueError: ``num_epochs < 0`` or an unknown ``metrics``; a state outside
      the source.

  Example:
    >>> import numpy as np, tfds_jax
    >>> src = tfds_jax.from_arrays({"x": np.ones(10)})
    >>> step = lambda total, batch: total + batch["x"].sum()
    >>> total, state = tfds_jax.run_epochs(step, 0.0, src, tfds_jax.init(src), 2, 5)
    >>> float(total), int(state.epoch)
    (20.0, 2)
    >>> step = lambda total, batch: (total, {"n": batch["x"].sum()})
    >>> _, _, history = tfds_jax.run_epochs(step, 0.0, src, tfds_jax.init(src), 2, 5, metrics="sum")
    >>> [float(h["n"]) for h in history]
    [10.0, 10.0]
  """
  _check_count("num_epochs", num_epochs)
  _check_metrics(metrics)
  _check_callable("train_step", train_step, "a function (carry, batch) -> carry")
  if on_epoch_end is not None:
    _check_callable("on_epoch_end", on_epoch_end, "a function (epoch, carry, state) called after each epoch")
  if any(isinstance(x, jax.core.Tracer) for x in jax.tree.leaves(state)):
    raise TypeError(
        "Expected a concrete SourceState, got a traced one: run_epochs runs a Python loop (progress"
        " bar, callbacks) and cannot run inside jit or vmap; call it outside jit, or use run_steps"
        " (a fixed number of steps) inside your jitted function.")
  state = _checked_state(source, state)
  n = source.num_records if hasattr(source, "num_records") else _source._num_records(source)  # pylint: disable=protected-access
  size = batch_size if batch_size is not None else getattr(source, "batch_size", None)
  _source._check_batch_size(n, size)  # pylint: disable=protected-access
  epoch, index = int(state.epoch), int(state.index)
  total = max(0, (num_epochs - epoch) * n - index)
  chunk = math.ceil(n / size / 20) if progress else math.ceil(n / size)
  per_epoch = math.ceil(n / size)  # the most steps an epoch can take
  fast = _in_memory(source) and fused
  spec = _metrics_spec(train_step, carry, source, state, batch_size, metrics, sharding) if fast else None
  history = []
  with tqdm.tqdm(total=total, unit="rec", unit_scale=True, delay=1.0, disable=not progress,
                 file=sys.stderr, desc="tfds_jax") as bar:
    while epoch < num_epochs:
      bar.set_description(f"epoch {epoch} (of 0..{num_epochs - 1})", refresh=False)
      acc = _empty(metrics, spec, per_epoch) if fast else None
      steps = 0
      while int(state.epoch) == epoch:
        before = (int(state.epoch), int(state.index))
        if fast:
          carry, state, acc, done_steps = _run_chunk(train_step, carry, source, state, acc,
                                                     jnp.int32(steps), size, chunk, metrics, sharding)
          steps += int(done_steps)
        else:
          carry, state, acc = _python_steps(train_step, carry, source, state, 1, batch_size, metrics,
                                            sharding, acc, steps, per_epoch)
          steps += 1
        done = (int(state.epoch) - before[0]) * n + int(state.index) - before[1]
        bar.update(min(done, bar.total - bar.n))
      if metrics is not None:
        acc = _finish(metrics, _trim(metrics, acc, steps), steps, None)
        history.append(acc)
      if on_epoch_end is not None:
        _call_beside(bar, on_epoch_end, epoch, carry, state, *(() if metrics is None else (acc,)))
      epoch = int(state.epoch)
  return (carry, state) if metrics is None else (carry, state, history)


def _call_beside(bar: tqdm.tqdm, fn: Callable[..., None], *args) -> None:
  """Calls ``fn`` with the bar cleared (if it is showing) and redraws it after, so that what
  ``fn`` prints or logs gets lines of its own."""
  shown = not bar.disable and bar.last_print_t > bar.start_t  # past tqdm's delay
  if shown:
    bar.clear()
  try:
    fn(*args)
  finally:
    if shown:
      sys.stdout.flush()
      bar.refresh()


@functools.partial(jax.jit, static_argnames=("train_step", "batch_size", "max_steps", "metrics",
                                             "sharding"))
def _run_chunk(train_step, carry, source, state, acc, offset, batch_size, max_steps, metrics, sharding):
  """Steps until the epoch changes or ``max_steps`` steps ran; metrics go to ``acc[offset:]``."""
  step = _checked_step(train_step, carry, source, state, batch_size, metrics, sharding)
  epoch = state.epoch

  def cond(loop):
    i, _, state, _ = loop
    return (i < max_steps) & (state.epoch == epoch)

  def body(loop):
    i, carry, state, acc = loop
    batch, state = _source.next_batch(source, state, batch_size, sharding=sharding)
    carry, m = step(carry, batch)
    return i + 1, carry, state, _accumulate(metrics, acc, m, offset + i)

  i, carry, state, acc = jax.lax.while_loop(cond, body, (jnp.zeros((), jnp.int32), carry, state, acc))
  return carry, state, acc, i


class _Step:
  """``train_step`` checked against the carry, as ``(carry, batch) -> (carry, metrics)``."""

  def __init__(self, train_step, metrics, spec):
    self._step, self._metrics = _jit(train_step), metrics
    self.metrics = spec  # ShapeDtypeStructs of one step's metrics, or None

  def __call__(self, carry, batch):
    out = self._step(carry, batch)  # the trace done by eval_shape is reused: no second trace
    return out if self._metrics is not None else (out, None)


def _checked_step(train_step, carry, source, state, batch_size, metrics, sharding) -> _Step:
  batch = jax.eval_shape(lambda s, st: _source.next_batch(s, st, batch_size, sharding=sharding)[0],
                         source, state)
  spec = jax.eval_shape(_jit(train_step), carry, batch)
  _check_output(spec, carry, metrics)
  return _Step(train_step, metrics, spec[1] if metrics is not None else None)


def _metrics_spec(train_step, carry, source, state, batch_size, metrics, sharding):
  """One step's metrics as ShapeDtypeStructs (None without metrics); traces the step once."""
  if metrics is None:
    return None
  if not _in_memory(source):
    batch = jax.tree.map(lambda v: jax.ShapeDtypeStruct((batch_size or source.batch_size, *v.shape), v.dtype),
                         _source.element_spec(source))
    spec = jax.eval_shape(_jit(train_step), carry, batch)
    _check_output(spec, carry, metrics)
    return spec[1]
  return _checked_step(train_step, carry, source, state, batch_size, metrics, sharding).metrics


def _check_output(out, carry, metrics) -> None:
  """Raises unless ``out`` (shapes of the step's output) fits ``carry`` and ``metrics``."""
  pair = isinstance(out, tuple) and len(out) == 2
  if metrics is not None and not pair:
    raise TypeError(
        f"Expected train_step to return (carry, metrics) with metrics={metrics!r}, got"
        f" {jax.tree.structure(out)}; return a pair: the new carry and a pytree of metrics (for"
        " example {'loss': loss}), or leave metrics=None and return the carry alone.")
  new = out[0] if metrics is not None else out
  given = jax.eval_shape(lambda c: c, carry)
  if jax.tree.structure(new) != jax.tree.structure(given):
    hint = ("return the new carry with the same keys, tuple lengths and None fields as the one"
            " given")
    if metrics is None and pair and jax.tree.structure(out[0]) == jax.tree.structure(given):
      hint = ("it returns (carry, metrics): pass metrics='stack' (per step), 'mean' or 'sum' to"
              " collect them")
    raise TypeError(
        f"Expected train_step to return a carry of the structure it was given,"
        f" {jax.tree.structure(given)}, got {jax.tree.structure(new)}; {hint}.")
  paths = jax.tree_util.tree_flatten_with_path(given)[0]
  for (path, a), b in zip(paths, jax.tree.leaves(new)):
    if a.shape != b.shape or (a.dtype != b.dtype and not a.weak_type):
      raise TypeError(
          f"Expected train_step to keep the carry's leaf {jax.tree_util.keystr(path) or '(root)'}"
          f" as {a.dtype}{list(a.shape)}, got {b.dtype}{list(b.shape)}; a loop carry cannot change"
          " shape or dtype: cast or reshape it inside the step, or start from a carry of that"
          " type.")


def _empty(metrics, spec, length):
  """The accumulator for ``length`` steps of metrics shaped as ``spec``."""
  if metrics is None:
    return None
  if metrics == "stack":
    return jax.tree.map(lambda s: jnp.zeros((max(length, 1), *s.shape), s.dtype), spec)  # trimmed after
  return jax.tree.map(lambda s: jnp.zeros(s.shape, _sum_dtype(metrics, s.dtype)), spec)


def _empty_like(metrics, m, length):
  return _empty(metrics, jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), m), length)


def _sum_dtype(metrics: str, dtype) -> np.dtype:
  if metrics == "mean":
    return jnp.result_type(dtype, jnp.float32)
  return jnp.result_type(dtype, jnp.int32) if dtype == jnp.bool_ else dtype


def _accumulate(metrics, acc, m, i):
  if metrics is None:
    return acc
  if metrics == "stack":
    return jax.tree.map(lambda a, x: a.at[i].set(x), acc, m)
  return jax.tree.map(lambda a, x: a + x.astype(a.dtype), acc, m)


_accumulate_jit = jax.jit(_accumulate, static_argnums=0)


def _finish(metrics, acc, steps: int, spec_fn):
  if metrics is None:
    return None
  if acc is None:  # no step ran (num_steps=0)
    acc = _empty(metrics, spec_fn(), 0) if spec_fn is not None else None
  if metrics == "mean":
    return jax.tree.map(lambda a: a / max(steps, 1) if steps else jnp.full_like(a, jnp.nan), acc)
  return acc


def _trim(metrics, acc, steps: int):
  return jax.tree.map(lambda a: a[:steps], acc) if metrics == "stack" and acc is not None else acc


def _check_count(what: str, value: Any) -> None:
  if isinstance(value, jax.core.Tracer) or isinstance(value, bool) or not isinstance(value, (int, np.integer)):
    raise TypeError(f"Expected {what} to be a static Python int, got {type(value).__name__} {value!r};"
                    f" pass a whole number of {what.split('_')[1]} (it sets the loop length).")
  if value < 0:
    raise ValueError(f"Expected {what} >= 0, got {value}; pass how many {what.split('_')[1]} to run.")


def _check_callable(what: str, fn: Any, kind: str) -> None:
  if not callable(fn):
    raise TypeError(f"Expected {what} to be {kind}, got {type(fn).__name__} {fn!r:.80}; pass a"
                    " function.")


def _checked_state(source: Any, state: Any) -> SourceState:
  """``state`` checked against an in-memory source where its values are concrete (called
  eagerly: the loop runs inside jit, where an invalid state would be read modulo the size);
  a stream checks its own states."""
  if not _in_memory(source):
    return state
  n = source.num_records if hasattr(source, "num_records") else _source._num_records(source)  # pylint: disable=protected-access
  _source.check_state(state, n, _source._label(source))  # pylint: disable=protected-access
  return _source.as_arrays(state)


def _check_metrics(metrics: Any) -> None:
  if metrics not in METRICS:
    raise ValueError(f"Expected metrics to be one of {list(METRICS)}, got {metrics!r}; 'stack' keeps"
                     " every step's metrics, 'mean' and 'sum' reduce them.")


def _in_memory(source: Any) -> bool:
  inner = source.source if isinstance(source, Pipeline) else source
  return isinstance(inner, (Source, dict))


@functools.cache
def _jit(train_step: TrainStep):
  return jax.jit(train_step)
