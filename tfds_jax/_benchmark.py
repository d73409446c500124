"""Benchmarks of a user's own train step: how much of each step the input pipeline takes.

:func:`benchmark` times ``num_steps`` steps of ``train_step(carry, batch)`` fed
by ``next_batch`` (in memory: ``run_steps`` inside one jitted
``lax.fori_loop``) against the same steps fed by batches already on the
device, the input-free limit. Both programs are compiled first (compile time
reported apart), each timing waits for the result (``block_until_ready``), and
the two are interleaved over the repeats, their medians compared.
"""

from __future__ import annotations

import statistics
import time
from typing import Any, Callable, Mapping, NamedTuple

import jax

from tfds_jax._drivers import run_steps
from tfds_jax._pipeline import Pipeline
from tfds_jax._source import SourceState, next_batch
from tfds_jax._stream import Stream


class Benchmark(NamedTuple):
  """What :func:`benchmark` measured; prints as a short table.

  Times are medians over ``repeats`` interleaved runs of ``num_steps`` steps.
  """

  records_per_s: float  # records per second with the input pipeline
  input_free_records_per_s: float  # records per second on batches already on the device
  step_s: float  # seconds per step with the input pipeline
  input_free_step_s: float  # seconds per step without it
  input_share: float  # 1 - input_free_step_s / step_s: the input's part of a step
  compile_s: float  # seconds to trace and compile the program with the input (Python loop: first call)
  input_free_compile_s: float  # the same for the input-free program
  num_steps: int  # steps per timing
  batch_size: int  # records per step
  repeats: int  # timings of each program
  loop: str  # "lax.fori_loop", or "Python loop" (fused=False, streams)
  device: str  # where it ran, e.g. "cpu" or "gpu (NVIDIA H100)"

  def __str__(self) -> str:
    rows = [("with next_batch", self.step_s, self.records_per_s, self.compile_s),
            ("input-free limit", self.input_free_step_s, self.input_free_records_per_s,
             self.input_free_compile_s)]
    where = "in one lax.fori_loop" if self.loop == "lax.fori_loop" else "in a Python loop of jitted steps"
    lines = [f"{self.num_steps} steps of batch {self.batch_size} {where} on {self.device},"
             f" median of {self.repeats} interleaved repeats",
             f"{'':18}{'step':>12}{'records/s':>12}{'compile':>10}"]
    lines += [f"{name:18}{_seconds(step):>12}{rate:>12,.0f}{compile_s:>9.2f}s"
              for name, step, rate, compile_s in rows]
    lines.append(f"input pipeline's share of the step: {_percent(self.input_share)}")
    return "\n".join(lines)

  def __repr__(self) -> str:
    return str(self)


def _percent(x: float) -> str:
  return f"{x:.0%}".replace("-0%", "0%")


def _seconds(s: float) -> str:
  return f"{s * 1e3:.3f} ms" if s < 1 else f"{s:.3f} s"


def _device() -> str:
  d = jax.devices()[0]
  return d.platform if d.platform == "cpu" else f"{d.platform} ({d.device_kind})"


def _median_times(fns: Mapping[str, Callable[[], Any]], repeats: int) -> dict[str, float]:
  """Median seconds of each ``fn``, all of them run in every repeat, the order
  alternating so that machine noise falls on each alike."""
  for fn in fns.values():
    jax.block_until_ready(fn())  # first run: allocation, caches
  times: dict[str, list[float]] = {name: [] for name in fns}
  names = list(fns)
  for r in range(repeats):
    for name in names if r % 2 == 0 else names[::-1]:
      start = time.perf_counter()
      jax.block_until_ready(fns[name]())
      times[name].append(time.perf_counter() - start)
  return {name: statistics.median(t) for name, t in times.items()}


def _compiled(fn: Callable, *args) -> tuple[Callable, float]:
  start = time.perf_counter()
  compiled = jax.jit(fn).lower(*args).compile()
  return compiled, time.perf_counter() - start


def benchmark(
    train_step: Callable[[Any, dict], Any],
    carry: Any,
    source: Any,
    state: SourceState,
    num_steps: int,
    batch_size: int | None = None,
    *,
    repeats: int = 5,
    fused: bool = True,
) -> Benchmark:
  """Times your train step fed by ``next_batch`` against the input-free limit.

  In memory (a :class:`Source` or a :class:`Pipeline` over one): ``run_steps``
  inside one jitted ``lax.fori_loop`` of ``num_steps`` steps, against a
  ``fori_loop`` of the same step on two batches already on the device,
  alternating (so that XLA cannot hoist the step's work on a fixed batch out
  of the loop). With ``fused=False``, or over a :class:`Stream`, a Python
  loop of jitted steps instead (``next_batch`` and the step in one jitted
  call, or ``next_batch`` from the stream and the jitted step), against the
  jitted step alone on the same two batches.

  Args:
    train_step: your pure ``(carry, batch) -> carry``.
    carry: its initial carry (parameters, optimizer state, ...).
    source: a :class:`Source`, :class:`Pipeline` or :class:`Stream`.
    state: the :class:`SourceState` every timing starts from.
    num_steps: steps per timing (static); enough for a timing of at least a
      few milliseconds.
    batch_size: records per batch (a pipeline knows its own).
    repeats: timings of each program; the median is reported.
    fused: time the steps inside one ``lax.fori_loop`` (default); False
      times a Python loop of jitted steps, for steps XLA compiles worse
      inside a loop (convolutions on XLA:CPU, jax-ml/jax#12868).

  Returns:
    A :class:`Benchmark`: records/s and seconds per step of both programs,
    the input's share of a step (``1 - input-free / with input``; near 0 when
    the input is not the bottleneck, and it may come out slightly negative
    from noise), and each program's compile time.

  Raises:
    ValueError: for ``num_steps`` or ``repeats`` below 1.

  Example:
    >>> import numpy as np, tfds_jax
    >>> from tfds_jax import testing
    >>> src = tfds_jax.from_arrays({"x": np.ones((64, 8), np.float32)})
    >>> step = lambda w, batch: w - 0.01 * (batch["x"] @ w - 1.0).mean() * batch["x"].mean(0)
    >>> result = testing.benchmark(step, np.zeros(8, np.float32), src, tfds_jax.init(src), 10, 16,
    ...                            repeats=3)
    >>> result.batch_size, result.loop
    (16, 'lax.fori_loop')
  """
  for name, value in (("num_steps", num_steps), ("repeats", repeats)):
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
      raise ValueError(f"Expected {name} to be an int >= 1, got {value!r}.")
  size = source.batch_size if isinstance(source, Pipeline) else batch_size
  if isinstance(size, bool) or not isinstance(size, int):
    raise ValueError(f"Expected batch_size to be an int, got {batch_size!r}; pass batch_size= (a"
                     " Pipeline knows its own).")
  first, after = next_batch(source, state, batch_size)
  second, _ = next_batch(source, after, batch_size)
  batches = jax.tree.map(lambda a, b: jax.numpy.stack([a, b]), first, second)
  inner = source.source if isinstance(source, Pipeline) else source
  if fused and not isinstance(inner, Stream):
    def with_input(carry, source, state):
      return run_steps(train_step, carry, source, state, num_steps, batch_size)[0]

    def input_free(carry, batches):
      def body(i, carry):
        return train_step(carry, jax.tree.map(lambda x: x[i % 2], batches))
      return jax.lax.fori_loop(0, num_steps, body, carry)

    with_fn, compile_s = _compiled(with_input, carry, source, state)
    free_fn, free_compile_s = _compiled(input_free, carry, batches)
    fns = {"with": lambda: with_fn(carry, source, state), "free": lambda: free_fn(carry, batches)}
    loop = "lax.fori_loop"
  else:
    step = jax.jit(train_step)
    start = time.perf_counter()
    jax.block_until_ready(step(carry, first))  # compiles (carries of any type: no AOT here)
    free_compile_s = time.perf_counter() - start
    if isinstance(inner, Stream):  # read outside jit: the compiled step is all there is to compile
      compile_s = free_compile_s
      with_input = lambda: _stream_loop(step, carry, source, state, num_steps, batch_size)  # noqa: E731
    else:  # one jitted call, next_batch and the step, per step
      def read_and_step(carry, source, state):
        batch, state = next_batch(source, state, batch_size)
        return train_step(carry, batch), state
      read_and_step = jax.jit(read_and_step)
      start = time.perf_counter()
      jax.block_until_ready(read_and_step(carry, source, state))
      compile_s = time.perf_counter() - start
      with_input = lambda: _step_loop(read_and_step, carry, source, state, num_steps)  # noqa: E731
    fns = {"with": with_input, "free": lambda: _fixed_loop(step, carry, (first, second), num_steps)}
    loop = "Python loop"
  t = _median_times(fns, repeats)
  records = num_steps * size
  return Benchmark(
      records_per_s=records / t["with"], input_free_records_per_s=records / t["free"],
      step_s=t["with"] / num_steps, input_free_step_s=t["free"] / num_steps,
      input_share=1.0 - t["free"] / t["with"], compile_s=compile_s,
      input_free_compile_s=free_compile_s, num_steps=num_steps, batch_size=size, repeats=repeats,
      loop=loop, device=_device())


def _stream_loop(step, carry, source, state, num_steps, batch_size):
  for _ in range(num_steps):
    batch, state = next_batch(source, state, batch_size)
    carry = step(carry, batch)
  return carry


def _step_loop(read_and_step, carry, source, state, num_steps):
  for _ in range(num_steps):
    carry, state = read_and_step(carry, source, state)
  return carry


def _fixed_loop(step, carry, batches, num_steps):
  for i in range(num_steps):
    carry = step(carry, batches[i % 2])
  return carry


def plot_benchmarks(results: Benchmark | Mapping[str, Benchmark], ax: Any = None) -> Any:
  """Plots each step as one bar: the input-free step, then the input pipeline's share.

  Args:
    results: a :class:`Benchmark`, or name -> :class:`Benchmark` to compare
      (models, batch sizes, pipelines).
    ax: a matplotlib ``Axes`` to draw on (default: a new figure's).

  Returns:
    The matplotlib ``Axes``.

  Raises:
    ImportError: if matplotlib is not installed.

  Example:
    >>> import numpy as np, tfds_jax
    >>> from tfds_jax import testing
    >>> src = tfds_jax.from_arrays({"x": np.ones((32, 4), np.float32)})
    >>> result = testing.benchmark(lambda c, b: c + b["x"].sum(), np.float32(0), src,
    ...                            tfds_jax.init(src), 4, 8, repeats=1)
    >>> ax = testing.plot_benchmarks({"sum": result})
    >>> ax.get_xlabel()
    'share of a step (median)'
  """
  try:
    import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel
  except ImportError as e:
    raise ImportError("Expected matplotlib for plot_benchmarks, got none installed; install it"
                      " with `pip install matplotlib`.") from e
  if isinstance(results, Benchmark):
    results = {"train step": results}
  if ax is None:
    _, ax = plt.subplots(figsize=(8, 0.5 * len(results) + 1.5))
  names = list(results)
  share = [min(1.0, max(0.0, results[k].input_share)) for k in names]
  ax.barh(names, [1 - x for x in share], label="train step on batches already on the device")
  ax.barh(names, share, left=[1 - x for x in share], label="added by the input pipeline")
  for i, k in enumerate(names):
    r = results[k]
    ax.text(1.02, i, f"{_percent(r.input_share)} input\n{_seconds(r.step_s)}/step, {r.records_per_s:,.0f} rec/s",
            va="center", fontsize=8)
  ax.set_xlim(0, 1.6)
  ax.set_xticks([0, 0.25, 0.5, 0.75, 1], ["0", "25%", "50%", "75%", "100%"])
  ax.set_xlabel("share of a step (median)")
  ax.invert_yaxis()
  ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(0, -0.22 - 0.3 / len(names)), ncol=2)
  ax.set_title("Input pipeline's share of the train step", fontsize=10)
  return ax
