"""Grain-compatible index shuffle: a Simon-cipher Feistel network in pure jnp.

A keyed pseudo-random permutation of ``[0, max_index]`` that maps one index at a
time, so a shuffled epoch costs O(1) memory and any position can be recomputed
on its own. Only ``uint32`` arithmetic is used, so it runs with x64 disabled.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np

_MIN_BLOCK_BITS = 16
_MAX_INDEX = 2**32 - 1
_U32 = jnp.uint32
_C = np.uint32  # constants: the same uint32 scalar in jnp and numpy arithmetic
_TABLE_BITS = 20  # host_permute walks a table of the whole block up to 2**20 entries (4 MiB)


def block_bits(max_index: int) -> int:
  """Returns the cipher's block size in bits for a permutation of [0, max_index].

  The block holds ``max_index`` (its bit length), rounded up to an even number
  and at least 16 bits, as Grain's C++ implementation does, except that Grain
  takes ``ceil(log2(max_index))`` bits: when ``max_index`` is a power of 4 at or
  above ``2**16`` that block is one bit too small to hold ``max_index``, and
  Grain's result is then not a permutation. Here it always is.

  Args:
    max_index: largest index of the permutation, ``0 <= max_index < 2**32``.

  Returns:
    An even number of bits in ``[16, 32]``.

  Example:
    >>> block_bits(59_999), block_bits(2**16)
    (16, 18)
  """
  bits = int(max_index).bit_length()
  return max(bits + bits % 2, _MIN_BLOCK_BITS)


def round_keys(seed: jax.typing.ArrayLike, rounds: int = 4, xp=jnp) -> list[jax.Array]:
  """Returns the cipher's round keys: C++ ``std::seed_seq{seed}.generate``.

  Args:
    seed: uint32 seed(s), any shape; every returned key has that shape.
    rounds: number of Feistel rounds (even, at least 4).
    xp: ``jax.numpy``, or ``numpy`` for keys computed on the host.

  Returns:
    ``rounds`` arrays of dtype uint32, the round keys in order.

  Example:
    >>> keys = round_keys(42)
    >>> len(keys), keys[0].dtype
    (4, dtype('uint32'))
  """
  seed = xp.asarray(seed).astype(xp.uint32)
  n = rounds
  t = 11 if n >= 623 else 7 if n >= 68 else 5 if n >= 39 else 3 if n >= 7 else (n - 1) // 2
  p = (n - t) // 2
  q = p + t
  m = max(2, n)  # max(number of seed words + 1, n), with one seed word.
  mix = lambda x: x ^ (x >> 27)
  out = [xp.full_like(seed, 0x8B8B8B8B)] * n
  for k in range(m):
    r1 = _C(1664525) * mix(out[k % n] ^ out[(k + p) % n] ^ out[(k - 1) % n])
    if k == 0:
      r2 = r1 + _C(1)  # + number of seed words
    elif k == 1:
      r2 = r1 + _C(k % n) + seed
    else:
      r2 = r1 + _C(k % n)
    out[(k + p) % n] = out[(k + p) % n] + r1
    out[(k + q) % n] = out[(k + q) % n] + r2
    out[k % n] = r2
  for k in range(m, m + n):
    r3 = _C(1566083941) * mix(out[k % n] + out[(k + p) % n] + out[(k - 1) % n])
    r4 = r3 - _C(k % n)
    out[(k + p) % n] = out[(k + p) % n] ^ r3
    out[(k + q) % n] = out[(k + q) % n] ^ r4
    out[k % n] = r4
  return out


def _check_static(max_index: int, rounds: int) -> None:
  if isinstance(max_index, jax.core.Tracer) or not isinstance(max_index, int):
    raise TypeError(
        f"Expected max_index to be a Python int (it fixes the cipher's block size),"
        f" got {type(max_index).__name__}; pass len(dataset) - 1 as a static int."
    )
  if not 0 <= max_index <= _MAX_INDEX:
    raise ValueError(
        f"Expected 0 <= max_index < 2**32, got {max_index}; split datasets larger"
        " than 2**32 records into shards."
    )
  if rounds < 4 or rounds % 2:
    raise ValueError(
        f"Expected an even number of rounds >= 4, got {rounds}; use rounds=4 to"
        " match Grain."
    )


def wrap(index: jax.typing.ArrayLike, size: int) -> jax.Array:
  """Returns ``index mod size`` as uint32, for any integer array (total).

  Python's modulo: a negative index counts from the end (``-1`` is
  ``size - 1``). Indices already in ``[0, size)`` are returned unchanged, so
  valid positions never change; invalid ones (a state of another dataset, say)
  land in range instead of reading outside the data or cycle-walking forever.

  Args:
    index: integer array, any shape (may be traced).
    size: the modulus, a static int in ``[1, 2**32]``.

  Returns:
    uint32 array shaped like ``index``.

  Raises:
    TypeError: if ``index`` is not an integer array (dtypes are static, so this
      holds under ``jit`` too).

  Example:
    >>> wrap(jnp.array([-1, 3, 12]), 10).tolist()
    [9, 3, 2]
  """
  index = jnp.asarray(index)
  if not jnp.issubdtype(index.dtype, jnp.integer):
    raise TypeError(f"Expected an integer index, got dtype {index.dtype}; positions are whole"
                    " numbers: cast them with .astype(jnp.int32).")
  if index.dtype.itemsize == 8:  # x64: exact in 64 bits
    return (index % size).astype(_U32)
  u = index.astype(_U32)  # two's complement: index mod 2**32
  if size == 2**32:
    return u
  r = u % _U32(size)
  if jnp.issubdtype(index.dtype, jnp.signedinteger):
    c = 2**32 % size  # a negative index is u - 2**32: take 2**32 mod size back off
    r = jnp.where(index < 0, jnp.where(r >= c, r - _U32(c), r + _U32(size - c)), r)
  return r


def permute(index: jax.Array, keys: list[jax.Array], max_index: int) -> jax.Array:
  """Maps ``index`` through the cipher with precomputed ``round_keys``.

  ``index_shuffle`` is ``permute(wrap(index, max_index + 1), round_keys(seed,
  rounds), max_index)``; callers that shuffle many indices with a few seeds
  compute the keys once. The indices must be in range (the cycle-walk ends
  only for those): use :func:`wrap` on any other.

  Args:
    index: uint32 indices in ``[0, max_index]``, any shape.
    keys: round keys from :func:`round_keys`, each broadcastable to ``index``.
    max_index: largest index, a static Python int.

  Returns:
    uint32 array shaped like ``index``.
  """
  _check_static(max_index, len(keys))
  index = jnp.asarray(index).astype(_U32)
  if max_index == 0:
    return jnp.zeros_like(index)
  w = block_bits(max_index) // 2
  keys = [k & _C((1 << w) - 1) for k in keys]
  encrypt = functools.partial(_encrypt, keys=keys, w=w)
  limit = _U32(max_index)

  def walk(v):
    for _ in range(passes):
      v = jnp.where(v > limit, encrypt(v), v)
    return v

  # Cycle-walking: re-encrypt values that fall outside [0, max_index]. Each
  # loop iteration makes several masked passes, enough that one iteration
  # almost always finishes: XLA's per-iteration cost exceeds a pass's.
  passes = walk_passes(max_index, index.size)
  return jax.lax.while_loop(lambda v: jnp.any(v > limit), walk, walk(encrypt(index)))


def host_permute(index: np.ndarray, seed: int, max_index: int) -> np.ndarray:
  """:func:`index_shuffle` with numpy on the host: the same values, nothing to compile.

  For a reader thread that needs a few record indices per batch (a stream):
  jnp's version costs a fraction of a second to trace and compile once per
  process. Blocks of up to ``2**20`` values walk a table of the whole block
  (``O(2**bits)`` host memory, at most 8 MiB, built once per seed: the walk
  there is long, up to the block size, and the table takes it in ``bits``
  squarings); larger ones walk each index, at most 1 in 4 values being
  outside the range there.

  Args:
    index: integers in ``[0, max_index]``, any shape.
    seed: the permutation's seed, an int (taken modulo ``2**32``).
    max_index: largest index, a Python int below ``2**32``.

  Returns:
    int64 array shaped like ``index``.

  Example:
    >>> import numpy as np
    >>> host_permute(np.arange(5), 42, 9).tolist() == index_shuffle(jnp.arange(5), 42, 9).tolist()
    True
  """
  _check_static(max_index, 4)
  index = np.asarray(index, np.int64)
  if max_index == 0:
    return np.zeros_like(index)
  bits = block_bits(max_index)
  if bits <= _TABLE_BITS:
    return _walked_table(int(seed) % 2**32, max_index)[index]
  with np.errstate(over="ignore"):
    keys = _host_keys(int(seed) % 2**32, bits)
    v = _encrypt(index.astype(np.uint32), keys, bits // 2)
    out = v > max_index
    while out.any():  # cycle-walking, on the values still outside
      v[out] = _encrypt(v[out], keys, bits // 2)
      out = v > max_index
  return v.astype(np.int64)


def _host_keys(seed: int, bits: int) -> list[np.ndarray]:
  return [k & _C((1 << bits // 2) - 1) for k in round_keys(np.array([seed], np.uint32), xp=np)]


@functools.lru_cache(maxsize=4)  # a batch spans at most two epochs; a few seeds at once
def _walked_table(seed: int, max_index: int) -> np.ndarray:
  """``index_shuffle(i, seed, max_index)`` for every ``i`` in ``[0, max_index]``."""
  bits = block_bits(max_index)
  with np.errstate(over="ignore"):
    step = _encrypt(np.arange(2**bits, dtype=np.uint32), _host_keys(seed, bits), bits // 2)
  # walk[v]: where a walk from v stops, after 2**k steps at most. In-range
  # values stop at once; squaring doubles the steps. Cycles that never enter
  # the range never converge, and are never reached from the range.
  walk = np.where(np.arange(2**bits) <= max_index, np.arange(2**bits, dtype=np.uint32), step)
  first = step[:max_index + 1]
  for _ in range(bits + 1):  # a walk is at most 2**bits steps
    got = walk[first]
    if (got <= max_index).all():
      return got.astype(np.int64)
    walk = walk[walk]
  raise AssertionError("unreachable: a cycle through the range enters it within 2**bits steps")


def _encrypt(v, keys, w: int):
  """The Feistel network on ``2 * w``-bit blocks: operators only, so the same
  code runs on jnp (traced) and numpy (host) arrays. ``keys`` are masked to ``w`` bits."""
  mask = _C((1 << w) - 1)

  def rotl(x, r):
    return ((x << _C(r)) | (x >> _C(w - r))) & mask

  left, right = (v >> _C(w)) & mask, v & mask
  for i in range(0, len(keys), 2):
    left = left ^ ((rotl(right, 1) & rotl(right, 8)) ^ rotl(right, 2)) ^ keys[i]
    right = right ^ ((rotl(left, 1) & rotl(left, 8)) ^ rotl(left, 2)) ^ keys[i + 1]
  return (left << _C(w)) | right


def walk_passes(max_index: int, count: int) -> int:
  """Masked cycle-walking passes per loop iteration for ``count`` indices.

  A value leaves the range with probability ``q = 1 - (max_index + 1) / 2**bits``
  per pass; after ``k`` passes all ``count`` are done with probability about
  ``1 - count * q**k``. Take ``k`` for a 1/64 chance of another iteration,
  between 1 and 8 passes (more barely speeds up small datasets, whose walks
  are long anyway, and doubles compile time).
  """
  q = 1.0 - (max_index + 1) / 2.0 ** block_bits(max_index)
  if q <= 0.0:
    return 1
  k = math.log(64.0 * max(count, 1)) / -math.log(q)
  return int(min(max(math.ceil(k), 1), 8))


@functools.partial(jax.jit, static_argnames=("max_index", "rounds"))
def _index_shuffle(index, seed, max_index, rounds):
  keys = round_keys(seed, rounds)  # from the seed as given, often a scalar
  shape = jnp.broadcast_shapes(index.shape, seed.shape)
  index = wrap(jnp.broadcast_to(index, shape), max_index + 1)  # in range: the walk ends
  return permute(index, keys, max_index)


def index_shuffle(
    index: jax.typing.ArrayLike,
    seed: jax.typing.ArrayLike,
    max_index: int,
    rounds: int = 4,
) -> jax.Array:
  """Returns the position of ``index`` in a seeded permutation of [0, max_index].

  Bit-identical to Grain's ``index_shuffle(index, max_index, seed, rounds)``
  wherever Grain's is a permutation. Grain's is not one when ``max_index`` is a
  power of 4 at or above ``2**16`` (datasets of 65537, 262145, ... records: the
  last index collides with index 0); there this function takes the next block
  size and stays a permutation, so its order differs from Grain's for those
  sizes only.

  Pure jnp with uint32 arithmetic: works under ``jit`` and ``vmap`` and with x64
  disabled, and uses O(1) memory per index.

  Total: an index outside ``[0, max_index]`` is first reduced modulo
  ``max_index + 1`` (Python's modulo, so ``-1`` is ``max_index``), so every
  input terminates and lands in range; indices in range are unchanged.

  Args:
    index: integer array of indices in ``[0, max_index]``, any shape (others
      are reduced modulo ``max_index + 1``).
    seed: uint32 seed(s) broadcastable to ``index``.
    max_index: largest index (dataset size minus one), a static Python int below
      ``2**32``.
    rounds: even number of Feistel rounds, at least 4 (Grain uses 4).

  Returns:
    uint32 array with the broadcast shape of ``index`` and ``seed``.

  Raises:
    TypeError: if ``max_index`` is not a Python int, or ``index`` or ``seed``
      is not an integer array.
    ValueError: if ``max_index``, ``rounds`` or an int ``seed`` is out of range.

  Example:
    >>> import jax.numpy as jnp
    >>> from tfds_jax import index_shuffle
    >>> perm = index_shuffle(jnp.arange(10), seed=42, max_index=9)
    >>> sorted(perm.tolist()) == list(range(10))
    True
  """
  _check_static(max_index, rounds)
  if isinstance(seed, int) and not 0 <= seed < 2**32:
    raise ValueError(f"Expected a seed in [0, 2**32), got {seed}; reduce it modulo 2**32.")
  seed = jnp.asarray(seed, _U32) if isinstance(seed, int) else jnp.asarray(seed)
  if not jnp.issubdtype(seed.dtype, jnp.integer):
    raise TypeError(f"Expected an integer (uint32) seed, got dtype {seed.dtype}; pass an int in"
                    " [0, 2**32) or a uint32 array.")
  return _index_shuffle(jnp.asarray(index), seed, max_index, rounds)
