"""Test and benchmark your own pipeline and train step the way tfds_jax tests itself.

Assertions that your code keeps tfds_jax's promises, each failing with the
first step (or position) that differs, the feature or carry leaf, and the
state to reproduce it from:

* :func:`assert_deterministic`: the same state in, the same result out (twice
  in this process, and in a fresh process with ``fresh_process=``);
* :func:`assert_resumes`: saved with ``state_to_dict`` after some steps and
  restored with ``state_from_dict`` (in a fresh call or process), a run
  continues exactly as if it had never stopped;
* :func:`assert_visits_every_record`: each epoch, through your stages,
  visits every record once;
* :func:`assert_jit_equals_eager` and :func:`assert_vmap_equals_loop`;
* :func:`assert_batch_size_invariant` and :func:`assert_sharding_invariant`:
  records do not depend on the batch size or the number of devices.

They take a :class:`~tfds_jax.Source`, :class:`~tfds_jax.Pipeline` or
random-access :class:`~tfds_jax.Stream`, a starting state, and optionally your
``train_step(carry, batch) -> carry`` and its carry (the arguments of
``run_steps``). Hypothesis strategies draw their inputs: :func:`sources`,
:func:`states`, :func:`batch_sizes`, :func:`seeds`, :func:`keys`,
:func:`meshes`. :func:`benchmark` times your step fed by ``next_batch``
against the input-free limit, :func:`plot_benchmarks` plots the result.

hypothesis is optional (``pip install tfds_jax[testing]``): this module
imports without it, and only making a strategy needs it (it then fails with
an ``ImportError`` saying what to install). ``plot_benchmarks`` needs
matplotlib.

Each example of a hypothesis test may compile new programs (another batch
size, another shape): use few examples and ``deadline=None``, and where a
failure is expected to be slow to shrink, ``phases=[Phase.generate]``.
Programs that trace to the same computation are compiled once and reused.

Example:
  >>> import jax, jax.numpy as jnp, numpy as np, tfds_jax
  >>> from tfds_jax import testing
  >>> src = tfds_jax.from_arrays({"x": np.arange(20, dtype=np.float32)})
  >>> def train_step(w, batch):
  ...   return w - 0.01 * jax.grad(lambda w: jnp.mean((w * batch["x"] - 1) ** 2))(w)
  >>> testing.assert_resumes(src, tfds_jax.init(src, seed=0, shuffle=True), 6, 8,
  ...                        train_step=train_step, carry=jnp.float32(0))
"""

from tfds_jax._benchmark import Benchmark
from tfds_jax._benchmark import benchmark
from tfds_jax._benchmark import plot_benchmarks
from tfds_jax._properties import TAG
from tfds_jax._properties import assert_batch_size_invariant
from tfds_jax._properties import assert_deterministic
from tfds_jax._properties import assert_jit_equals_eager
from tfds_jax._properties import assert_resumes
from tfds_jax._properties import assert_sharding_invariant
from tfds_jax._properties import assert_visits_every_record
from tfds_jax._properties import assert_vmap_equals_loop
from tfds_jax._strategies import DTYPES
from tfds_jax._strategies import batch_sizes
from tfds_jax._strategies import keys
from tfds_jax._strategies import meshes
from tfds_jax._strategies import seeds
from tfds_jax._strategies import sources
from tfds_jax._strategies import states

__all__ = [
    "DTYPES",
    "TAG",
    "Benchmark",
    "assert_batch_size_invariant",
    "assert_deterministic",
    "assert_jit_equals_eager",
    "assert_resumes",
    "assert_sharding_invariant",
    "assert_visits_every_record",
    "assert_vmap_equals_loop",
    "batch_sizes",
    "benchmark",
    "keys",
    "meshes",
    "plot_benchmarks",
    "seeds",
    "sources",
    "states",
]
