"""Epoch drivers: run a train step over many batches inside one ``jit``.

:func:`run_steps` runs ``num_steps`` steps in one ``lax.fori_loop``;
:func:`run_epochs` runs whole epochs, each in jitted ``lax.while_loop`` calls,
with a callback between epochs (outside ``jit``: log, evaluate, save) and a
progress bar. Both take the data as an argument, never closing over it, and
both give exactly the batches ``next_batch`` would, so a run split into
calls, chunks or resumed from a saved state is the same run.

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
import tqdm

from tfds_jax import _source
from tfds_jax._pipeline import Pipeline
from tfds_jax._source import Source, SourceState
from tfds_jax._types import Batch

TrainStep = Callable[[Any, Batch], Any]


def run_steps(
    train_step: TrainStep,
    carry: Any,
    source: Any,
    state: SourceState,
    num_steps: int,
    batch_size: int | None = None,
    *,
    fused: bool = True,
) -> tuple[Any, SourceState]:
  """Runs ``carry = train_step(carry, batch)`` for ``num_steps`` batches.

  In one jitted ``lax.fori_loop`` for in-memory sources and pipelines (and
  inlined when called inside your own ``jit`` or ``vmap``), else a Python loop
  over a stream's batches with ``train_step`` jitted.

  Args:
    train_step: a pure ``(carry, batch) -> carry``, defined once (it is a
      static argument: a new function object compiles again).
    carry: any pytree (parameters, optimizer state, metrics).
    source: a :class:`Source`, :class:`Pipeline` or :class:`Stream`.
    state: the :class:`SourceState` to start from.
    num_steps: number of batches (static).
    batch_size: records per batch (a pipeline knows its own).
    fused: run the steps inside one loop (default). False runs one jitted
      call (``next_batch`` and ``train_step``) per batch from Python, with the
      same result: for steps XLA compiles worse inside a loop body, such as
      convolutions on XLA:CPU (jax-ml/jax#12868; see BENCHMARKS.md).

  Returns:
    ``(carry, state)`` after the last step.

  Example:
    >>> import numpy as np, tfds_jax
    >>> src = tfds_jax.from_arrays({"x": np.arange(10.0)})
    >>> step = lambda total, batch: total + batch["x"].sum()
    >>> total, state = tfds_jax.run_steps(step, 0.0, src, tfds_jax.init(src), 5, 4)
    >>> float(total), int(state.epoch), int(state.index)
    (90.0, 2, 0)
  """
  if not _in_memory(source):
    for _ in range(num_steps):
      batch, state = _source.next_batch(source, state, batch_size)
      carry = _jit(train_step)(carry, batch)
    return carry, state
  if not fused:
    for _ in range(num_steps):
      carry, state = _run_steps(train_step, carry, source, state, 1, batch_size)
    return carry, state
  return _run_steps(train_step, carry, source, state, num_steps, batch_size)


@functools.partial(jax.jit, static_argnames=("train_step", "num_steps", "batch_size"))
def _run_steps(train_step, carry, source, state, num_steps, batch_size):
  def body(_, loop):
    carry, state = loop
    batch, state = _source.next_batch(source, state, batch_size)
    return train_step(carry, batch), state

  return jax.lax.fori_loop(0, num_steps, body, (carry, state))


def run_epochs(
    train_step: TrainStep,
    carry: Any,
    source: Any,
    state: SourceState,
    num_epochs: int,
    batch_size: int | None = None,
    *,
    on_epoch_end: Callable[[int, Any, SourceState], None] | None = None,
    progress: bool = True,
    fused: bool = True,
) -> tuple[Any, SourceState]:
  """Runs steps until ``state.epoch`` reaches ``num_epochs``.

  ``num_epochs`` is the epoch to stop at, not a count, so a run restored
  mid-epoch from a checkpoint and called again with the same ``num_epochs``
  finishes the same schedule. An epoch ends with the batch that crosses into
  the next one (batches never shrink: its last records are the next epoch's
  first).

  Args:
    train_step: a pure ``(carry, batch) -> carry``, defined once.
    carry: any pytree.
    source: a :class:`Source`, :class:`Pipeline` or :class:`Stream`.
    state: the :class:`SourceState` to start from.
    num_epochs: stop once ``state.epoch >= num_epochs``.
    batch_size: records per batch (a pipeline knows its own).
    on_epoch_end: called as ``on_epoch_end(epoch, carry, state)`` after each
      epoch, outside ``jit`` (evaluate, log, save a checkpoint).
    progress: show a progress bar (records, on stderr) once a run takes
      more than a second; an epoch then runs in about 20 jitted calls instead
      of one, giving the same result.
    fused: as for :func:`run_steps`: False runs one jitted call per batch.

  Returns:
    ``(carry, state)`` at the end of the last epoch.

  Example:
    >>> import numpy as np, tfds_jax
    >>> src = tfds_jax.from_arrays({"x": np.ones(10)})
    >>> step = lambda total, batch: total + batch["x"].sum()
    >>> total, state = tfds_jax.run_epochs(step, 0.0, src, tfds_jax.init(src), 2, 5)
    >>> float(total), int(state.epoch)
    (20.0, 2)
  """
  n = source.num_records if hasattr(source, "num_records") else _source._num_records(source)  # pylint: disable=protected-access
  size = batch_size if batch_size is not None else getattr(source, "batch_size", None)
  _source._check_batch_size(n, size)  # pylint: disable=protected-access
  epoch, index = int(state.epoch), int(state.index)
  total = max(0, (num_epochs - epoch) * n - index)
  chunk = math.ceil(n / size / 20) if progress else math.ceil(n / size)
  with tqdm.tqdm(total=total, unit="rec", unit_scale=True, delay=1.0, disable=not progress,
                 file=sys.stderr, desc="tfds_jax") as bar:
    while epoch < num_epochs:
      bar.set_description(f"tfds_jax epoch {epoch + 1}/{num_epochs}")
      while int(state.epoch) == epoch:
        before = (int(state.epoch), int(state.index))
        if _in_memory(source) and fused:
          carry, state = _run_chunk(train_step, carry, source, state, size, chunk)
        else:
          carry, state = run_steps(train_step, carry, source, state, 1, batch_size, fused=False)
        done = (int(state.epoch) - before[0]) * n + int(state.index) - before[1]
        bar.update(min(done, bar.total - bar.n))
      if on_epoch_end is not None:
        on_epoch_end(epoch, carry, state)
      epoch = int(state.epoch)
  return carry, state


@functools.partial(jax.jit, static_argnames=("train_step", "batch_size", "max_steps"))
def _run_chunk(train_step, carry, source, state, batch_size, max_steps):
  """Steps until the epoch changes or ``max_steps`` steps ran."""
  epoch = state.epoch

  def cond(loop):
    i, _, state = loop
    return (i < max_steps) & (state.epoch == epoch)

  def body(loop):
    i, carry, state = loop
    batch, state = _source.next_batch(source, state, batch_size)
    return i + 1, train_step(carry, batch), state

  _, carry, state = jax.lax.while_loop(cond, body, (jnp.zeros((), jnp.int32), carry, state))
  return carry, state


def _in_memory(source: Any) -> bool:
  inner = source.source if isinstance(source, Pipeline) else source
  return isinstance(inner, (Source, dict))


@functools.cache
def _jit(train_step: TrainStep):
  return jax.jit(train_step)
