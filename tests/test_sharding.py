"""sharding=: batches split over a mesh equal the unsharded ones; each device and process reads its own rows.

conftest.py gives this process 8 CPU devices; the multi-process test starts two
processes of 2 devices each that meet through jax.distributed on 127.0.0.1.
"""

import json
import os
import socket
import subprocess
import sys

import jax
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

import tfds_jax
from tfds_jax import testing

TESTS = os.path.dirname(os.path.abspath(__file__))
N = 53
RNG = np.random.default_rng(3)
DATA = {"image": RNG.integers(0, 256, (N, 4, 4, 3)).astype(np.uint8), "label": np.arange(N)}
MESH = Mesh(np.array(jax.devices()[:8]).reshape(4, 2), ("data", "model"))
SHARDINGS = [NamedSharding(MESH, P("data")), NamedSharding(MESH, P(("data", "model")))]
SOURCE = tfds_jax.from_arrays(DATA, device=NamedSharding(MESH, P()))


def _equal(a, b):
  assert a.keys() == b.keys()
  for k in a:
    np.testing.assert_array_equal(np.asarray(a[k]), np.asarray(b[k]), err_msg=k)


def _slices(sharding):
  return 4 if sharding.spec == P("data") else 8


def test_eight_devices():
  assert jax.device_count() >= 8


@settings(max_examples=10)
@given(which=st.integers(0, 1), per_slice=st.integers(1, 6), seed=st.integers(0, 2**32 - 1),
       start=st.integers(0, 10**12), shuffle=st.booleans())
def test_sharded_batch_at_and_next_batch_equal_unsharded(which, per_slice, seed, start, shuffle):
  sharding = SHARDINGS[which]
  size = per_slice * _slices(sharding)
  got = tfds_jax.batch_at(SOURCE, start, size, seed if shuffle else None, sharding=sharding)
  _equal(got, tfds_jax.batch_at(SOURCE, start, size, seed if shuffle else None))
  for v in got.values():
    assert v.sharding.spec == P(sharding.spec[0]) and v.sharding.mesh == MESH
    assert {s.data.shape[0] for s in v.addressable_shards} == {per_slice}
  state = tfds_jax.init(SOURCE, seed=seed, shuffle=shuffle)
  for _ in range(3):
    a, a_state = tfds_jax.next_batch(SOURCE, state, size, sharding=sharding)
    b, state = tfds_jax.next_batch(SOURCE, state, size)
    _equal(a, b)
    assert (int(a_state.epoch), int(a_state.index)) == (int(state.epoch), int(state.index))


def test_sharded_pipeline_equals_unsharded_inside_jit():
  sharding = SHARDINGS[0]
  pipe = tfds_jax.pipeline(SOURCE, tfds_jax.random_crop(padding=1), tfds_jax.random_flip(),
                           tfds_jax.to_float(), batch_size=16, shuffle=True)

  @jax.jit
  def two(pipe, state):
    a, state = tfds_jax.next_batch(pipe, state, sharding=sharding)
    b, state = tfds_jax.next_batch(pipe, state, sharding=sharding)
    return a, b, state

  a, b, _ = two(pipe, tfds_jax.init(pipe, seed=8))
  ua, state = tfds_jax.next_batch(pipe, tfds_jax.init(pipe, seed=8))
  ub, _ = tfds_jax.next_batch(pipe, state)
  _equal(a, ua)
  _equal(b, ub)
  assert a["image"].sharding.spec == P("data")
  _equal(tfds_jax.batch_at(pipe, 5 * 16, seed=8, sharding=sharding), tfds_jax.batch_at(pipe, 5 * 16, seed=8))


def test_each_device_gathers_only_its_rows():
  sharding = SHARDINGS[1]
  state = tfds_jax.init(SOURCE, seed=1, shuffle=True)
  hlo = jax.jit(lambda s, st: tfds_jax.next_batch(s, st, 16, sharding=sharding)).lower(SOURCE, state).compile().as_text()
  assert not any(op in hlo for op in ("all-gather", "all-reduce", "all-to-all", "collective-permute"))
  # the per-device program gathers 2 rows (16 over 8 devices), never the whole batch
  gathers = [line for line in hlo.splitlines() if " gather(" in line and "u8[" in line]
  assert gathers and all("u8[2,1,48]" in line for line in gathers), gathers


def test_sharding_errors_are_clear():
  with pytest.raises(TypeError, match="Expected a jax.sharding.NamedSharding over the batch axis"):
    tfds_jax.batch_at(SOURCE, 0, 8, sharding=jax.sharding.SingleDeviceSharding(jax.devices()[0]))
  with pytest.raises(ValueError, match="Expected a sharding that splits the batch axis only"):
    tfds_jax.batch_at(SOURCE, 0, 8, sharding=NamedSharding(MESH, P(None, "data")))
  with pytest.raises(ValueError, match="Expected a batch size divisible by the 4 slices"):
    tfds_jax.batch_at(SOURCE, 0, 6, sharding=SHARDINGS[0])
  one_device = tfds_jax.from_arrays(DATA)
  with pytest.raises(ValueError, match="Expected feature 'image' replicated on the mesh's 8 devices"):
    tfds_jax.next_batch(one_device, tfds_jax.init(one_device), 8, sharding=SHARDINGS[0])


@pytest.fixture(scope="module")
def toy(toy_dirs):
  return toy_dirs["array_record"]


def test_sharded_stream_equals_unsharded(toy):
  with tfds_jax.stream("toy_images", "train", data_dir=toy, include_keys=["image", "label"]) as s:
    state = tfds_jax.init(s, seed=2, shuffle=True)
    testing.assert_sharding_invariant(s, state, 3, 12, mesh=MESH, axes="data")
    assert tfds_jax.next_batch(s, state, 12, sharding=SHARDINGS[0])[0]["image"].sharding.spec == P("data")


_WORKER = r"""
import json, os, sys
pid, port, data_dir, out = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4]
import jax, numpy as np
jax.distributed.initialize(coordinator_address=f"127.0.0.1:{port}", num_processes=2, process_id=pid)
import tfds_jax
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
from tfds_jax import _array_record
read = []
original = _array_record.RandomAccessReader.records
def spy(self, rows):
  read.extend(int(r) for r in rows)
  return original(self, rows)
_array_record.RandomAccessReader.records = spy
sharding = NamedSharding(Mesh(np.array(jax.devices()), ("data",)), P("data"))
rng = np.random.default_rng(3)
src = tfds_jax.from_arrays({"image": rng.integers(0, 256, (53, 4, 4, 3)).astype(np.uint8), "label": np.arange(53)})
pipe = tfds_jax.pipeline(src, tfds_jax.random_flip(), tfds_jax.to_float(), batch_size=8, shuffle=True)
result = {"process_count": jax.process_count(), "devices": jax.device_count(), "shards": [], "sums": []}
def record(name, step, batch):
  for k, v in batch.items():
    for s in v.addressable_shards:
      result["shards"].append([name, step, k, s.index[0].start or 0, np.asarray(s.data).tolist()])
  result["sums"].append(float(jax.jit(lambda b: b["label"].astype(np.float32).sum())(batch)))
state = tfds_jax.init(pipe, seed=5)
for step in range(7):
  batch, state = tfds_jax.next_batch(pipe, state, sharding=sharding)
  record("pipeline", step, batch)
state = tfds_jax.init(src, seed=6, shuffle=True)
for step in range(3):
  batch, state = tfds_jax.next_batch(src, state, 12, sharding=sharding)
  record("source", step, batch)
with tfds_jax.stream("toy_images", "train", data_dir=data_dir, include_keys=["image", "label"], read_ahead=0) as s:
  state = tfds_jax.init(s, seed=7, shuffle=True)
  for step in range(3):
    batch, state = tfds_jax.next_batch(s, state, 12, sharding=sharding)
    record("stream", step, batch)
result["read"] = read
json.dump(result, open(out, "w"))
"""


def _free_port():
  with socket.socket() as sock:
    sock.bind(("127.0.0.1", 0))
    return sock.getsockname()[1]


def test_two_processes_assemble_the_same_global_batches(toy, tmp_path):
  env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=2", "PYTHONPATH": TESTS}
  port = str(_free_port())
  outs = [tmp_path / f"out{i}.json" for i in range(2)]
  procs = [subprocess.Popen([sys.executable, "-c", _WORKER, str(i), port, str(toy), str(outs[i])], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for i in range(2)]
  logs = [p.communicate(timeout=300)[0] for p in procs]
  assert all(p.returncode == 0 for p in procs), "\n".join(log[-3000:] for log in logs)
  results = [json.loads(o.read_text()) for o in outs]
  assert [(r["process_count"], r["devices"]) for r in results] == [(2, 4), (2, 4)]
  assert results[0]["sums"] == results[1]["sums"]  # a jitted reduction over the global array

  def assemble(name, step, like):
    out = {k: np.zeros_like(np.asarray(v)) for k, v in like.items()}
    for r in results:
      for n, s, k, start, data in r["shards"]:
        if (n, s) == (name, step):
          out[k][start:start + len(data)] = data
    return out

  pipe = tfds_jax.pipeline(tfds_jax.from_arrays(DATA), tfds_jax.random_flip(), tfds_jax.to_float(),
                           batch_size=8, shuffle=True)
  state = tfds_jax.init(pipe, seed=5)
  for step in range(7):
    batch, state = tfds_jax.next_batch(pipe, state)
    _equal(assemble("pipeline", step, batch), batch)
  state = tfds_jax.init(SOURCE, seed=6, shuffle=True)
  for step in range(3):
    batch, state = tfds_jax.next_batch(SOURCE, state, 12)
    _equal(assemble("source", step, batch), batch)
  with tfds_jax.stream("toy_images", "train", data_dir=toy, include_keys=["image", "label"]) as s:
    state = tfds_jax.init(s, seed=7, shuffle=True)
    wanted = []
    for step in range(3):
      batch, state = tfds_jax.next_batch(s, state, 12)
      _equal(assemble("stream", step, batch), batch)
      rows = np.asarray(tfds_jax.record_indices(40, step * 12 // 40, step * 12 % 40, 12, state.seed))
      wanted.append((rows[:6].tolist(), rows[6:].tolist()))
  # each process read exactly its own half of every batch, nothing else
  assert results[0]["read"] == sum((w[0] for w in wanted), [])
  assert results[1]["read"] == sum((w[1] for w in wanted), [])
