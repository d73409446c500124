"""Type aliases shared across tfds_jax."""

from __future__ import annotations

import jax

Batch = dict[str, jax.Array]
"""A batch: feature name -> array whose leading axis is the batch."""

PRNGKey = jax.Array
"""A ``jax.random`` key, typed (``jax.random.key``) or raw uint32[2]."""
