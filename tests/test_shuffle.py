"""index_shuffle: bijection for every size, bit-identical to Grain, jit = vmap = eager."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from grain._src.python.experimental.index_shuffle.python import index_shuffle_module as grain_shuffle
from hypothesis import given, settings
from hypothesis import strategies as st

from tfds_jax import _shuffle
from tfds_jax import index_shuffle

_jit_shuffle = jax.jit(index_shuffle, static_argnames=("max_index", "rounds"))
seeds = st.integers(0, 2**32 - 1)
# Grain's permutation is broken where max_index is a power of 4 >= 2**16.
_GRAIN_BROKEN = {4**k for k in range(8, 16)}


def _perm(n, seed, rounds=4):
  return np.asarray(_jit_shuffle(jnp.arange(n, dtype=jnp.uint32), jnp.uint32(seed), max_index=n - 1, rounds=rounds))


def _grain(n, seed, indices, rounds=4):
  return np.array([grain_shuffle.index_shuffle(int(i), max_index=n - 1, seed=seed, rounds=rounds) for i in indices])


# Values printed by grain 0.2.18's index_shuffle (rounds=4) for indices 0..7.
GOLDEN = {
    (10, 0): [0, 4, 6, 7, 8, 3, 1, 9],
    (10, 42): [8, 6, 7, 9, 0, 5, 1, 2],
    (1000, 7): [687, 904, 974, 514, 833, 444, 771, 891],
    (60000, 2**32 - 1): [52300, 48421, 11881, 25359, 5623, 31799, 39920, 55919],
}


@pytest.mark.parametrize("n,seed", sorted(GOLDEN))
def test_pinned_golden_values(n, seed):
  np.testing.assert_array_equal(_perm(n, seed)[:8], GOLDEN[(n, seed)])
  np.testing.assert_array_equal(_grain(n, seed, range(8)), GOLDEN[(n, seed)])


@given(n=st.integers(1, 3000), seed=seeds)
def test_matches_grain_small(n, seed):
  np.testing.assert_array_equal(_perm(n, seed), _grain(n, seed, range(n)))


@given(
    n=st.one_of(st.integers(3001, 2**32 - 1), st.sampled_from([2**k + d for k in range(12, 32) for d in (-1, 0, 1)])),
    seed=seeds,
    data=st.data(),
)
def test_matches_grain_large(n, seed, data):
  if n - 1 in _GRAIN_BROKEN:
    return  # Covered by test_grain_broken_sizes_stay_permutations.
  idx = np.array(data.draw(st.lists(st.integers(0, n - 1), min_size=1, max_size=64)) + [0, n - 1], np.uint32)
  ours = np.asarray(_jit_shuffle(jnp.asarray(idx), jnp.uint32(seed), max_index=n - 1))
  np.testing.assert_array_equal(ours, _grain(n, seed, idx))
  np.testing.assert_array_equal(_shuffle.host_permute(idx, seed, n - 1), ours)  # streams' host indices


@given(n=st.integers(1, 5000), seed=seeds, rounds=st.sampled_from([4, 6, 8]))
def test_bijection_every_small_size(n, seed, rounds):
  perm = _perm(n, seed, rounds)
  assert perm.dtype == np.uint32
  np.testing.assert_array_equal(np.sort(perm), np.arange(n))
  if rounds == 4 and n > 1:
    np.testing.assert_array_equal(perm[: min(n, 50)], _grain(n, seed, range(min(n, 50)), rounds))


@pytest.mark.parametrize("n", [2**16, 2**16 + 1, 2**16 + 2, 2**18 + 1, 2**20 + 1, 2**17, 2**17 + 1, 2**19 + 1])
def test_bijection_at_block_edges(n):
  for seed in (0, 12345):
    np.testing.assert_array_equal(np.sort(_perm(n, seed)), np.arange(n))


@pytest.mark.parametrize("n", [2**16 + 1, 2**18 + 1])
def test_grain_broken_sizes_stay_permutations(n):
  # Grain maps the last index onto index 0's value: not a permutation.
  assert _grain(n, 0, [n - 1])[0] == _grain(n, 0, [0])[0]
  perm = _perm(n, 0)
  np.testing.assert_array_equal(np.sort(perm), np.arange(n))
  assert _shuffle.block_bits(n - 1) == int(n - 1).bit_length() + 1


def test_block_bits_matches_grain_except_broken_sizes():
  for m in list(range(1, 5000)) + [2**k + d for k in range(12, 32) for d in (-1, 0, 1)]:
    grain_bits = max(int(np.ceil(np.log2(m))) + int(np.ceil(np.log2(m))) % 2, 16)
    ours = _shuffle.block_bits(m)
    if m in _GRAIN_BROKEN:
      assert ours == grain_bits + 2
    else:
      assert ours == grain_bits, m


@settings(max_examples=10)  # three compilations per example
@given(n=st.integers(2, 2000), seeds_=st.lists(seeds, min_size=2, max_size=4, unique=True))
def test_jit_and_vmap_agree(n, seeds_):
  idx = jnp.arange(n, dtype=jnp.uint32)
  one_by_one = np.stack([np.asarray(index_shuffle(idx, s, n - 1)) for s in seeds_])
  vmapped = jax.jit(jax.vmap(lambda s: index_shuffle(idx, s, n - 1)))(jnp.asarray(seeds_, jnp.uint32))
  np.testing.assert_array_equal(one_by_one, np.asarray(vmapped))
  per_index = jax.vmap(lambda i: index_shuffle(i, seeds_[0], n - 1))(idx)
  np.testing.assert_array_equal(one_by_one[0], np.asarray(per_index))
  if n >= 8:  # Different seeds give different orders.
    assert len({tuple(row) for row in one_by_one.tolist()}) == len(seeds_)


@given(n=st.integers(50_000, 65_536), seed=seeds)
def test_op_by_op_eager_agrees_with_jit(n, seed):
  # Sizes near the block keep the un-jitted cycle-walking loop short.
  idx = np.array([0, 1, n // 2, n - 1], np.uint32)
  with jax.disable_jit():
    eager = np.asarray(index_shuffle(jnp.asarray(idx), seed, n - 1))
  np.testing.assert_array_equal(eager, np.asarray(_jit_shuffle(jnp.asarray(idx), jnp.uint32(seed), max_index=n - 1)))
  np.testing.assert_array_equal(eager, _grain(n, seed, idx))


def test_works_with_x64_disabled_and_broadcasts_seeds():
  assert not jax.config.jax_enable_x64
  out = index_shuffle(jnp.arange(6)[:, None], jnp.arange(3, dtype=jnp.uint32)[None, :], 5)
  assert out.shape == (6, 3) and out.dtype == jnp.uint32
  for s in range(3):
    np.testing.assert_array_equal(np.asarray(out[:, s]), _grain(6, s, range(6)))


def test_errors():
  with pytest.raises(ValueError, match=r"Expected 0 <= max_index < 2\*\*32, got 4294967296"):
    index_shuffle(0, 0, 2**32)
  with pytest.raises(ValueError, match="Expected an even number of rounds >= 4, got 3"):
    index_shuffle(0, 0, 10, rounds=3)
  with pytest.raises(TypeError, match="Expected max_index to be a Python int"):
    jax.jit(index_shuffle)(0, 0, 10)


@given(n=st.integers(1, 70_000), seed=seeds, index=st.integers(-2**31, 2**31 - 1))
def test_terminates_for_every_index_by_reducing_it_modulo_the_size(n, seed, index):
  # Out of range, the cycle-walk could loop forever (no in-range value on its cycle);
  # reducing first makes it total, and in-range indices are unchanged.
  got = _jit_shuffle(jnp.int32(index), jnp.uint32(seed), max_index=n - 1)
  assert 0 <= int(got) < n
  assert int(got) == int(_jit_shuffle(jnp.int32(index % n), jnp.uint32(seed), max_index=n - 1))


def test_the_out_of_range_indices_that_hung_terminate():
  # 660 out-of-range (seed, index) pairs for 100 records, among them the one that hung
  # (seed 2, index 471): each lands on the record of index mod 100.
  idx = jnp.arange(100, 166, dtype=jnp.uint32)[None, :] + jnp.array([0, 371, 2**32 - 200], jnp.uint32)[:, None, None]
  seeds_ = jnp.arange(10, dtype=jnp.uint32)[:, None]
  for block in idx:
    got = np.asarray(index_shuffle(block, seeds_, 99))
    want = np.asarray(index_shuffle(np.asarray(block) % 100, seeds_, 99))
    np.testing.assert_array_equal(got, want)
  assert int(index_shuffle(jnp.uint32(471), 2, 99)) == int(index_shuffle(71, 2, 99))
  assert int(index_shuffle(jnp.int32(-1), 2, 99)) == int(index_shuffle(99, 2, 99))


def test_wrap_is_pythons_modulo_for_every_integer_dtype():
  for dtype, values in ((jnp.int32, [-2**31, -7, -1, 0, 5, 2**31 - 1]), (jnp.uint32, [0, 9, 2**32 - 1]),
                        (jnp.int8, [-128, -3, 127]), (jnp.uint8, [0, 255])):
    for size in (1, 7, 10, 2**16, 2**31 + 5, 2**32):
      got = np.asarray(_shuffle.wrap(jnp.asarray(values, dtype), size)).tolist()
      assert got == [v % size for v in values], (dtype, size)
  with pytest.raises(TypeError, match="Expected an integer index, got dtype float32"):
    index_shuffle(jnp.float32(3.5), 0, 9)
  with pytest.raises(TypeError, match="Expected an integer \\(uint32\\) seed, got dtype float32"):
    index_shuffle(3, jnp.float32(1.0), 9)


@given(n=st.one_of(st.integers(1, 70_000), st.sampled_from([2**20, 2**20 + 1, 3_000_017])), seed=seeds,
       data=st.data())
def test_host_permute_equals_index_shuffle(n, seed, data):
  """Streams compute record indices with numpy (table walk up to 2**20, per-index walk above)."""
  idx = np.asarray(data.draw(st.lists(st.integers(0, n - 1), min_size=1, max_size=64)))
  got = _shuffle.host_permute(idx, seed, n - 1)
  np.testing.assert_array_equal(got, np.asarray(_jit_shuffle(jnp.asarray(idx, jnp.uint32), jnp.uint32(seed),
                                                             max_index=n - 1)))


def test_host_permute_golden_values_are_grains():
  for (n, seed), want in GOLDEN.items():
    np.testing.assert_array_equal(_shuffle.host_permute(np.arange(8), seed, n - 1), want)
