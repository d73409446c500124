"""stream() and from_tfds(): same order as the eager source, exact resume, clean shutdown, clear errors."""

import gc
import logging
import os
import re
import sys
import threading
import time

import jax
import numpy as np
import pytest
import tensorflow as tf
from hypothesis import given, settings
from hypothesis import strategies as st

import testing_factories
import tfds_builders
import tfds_jax
from tfds_jax import _stream
from tfds_jax import testing

N = tfds_builders.TRAIN


@pytest.fixture(scope="module")
def dirs(tmp_path_factory):
  """The toy datasets prepared twice: as TFRecord and as ArrayRecord."""
  tfrecord, array_record = tmp_path_factory.mktemp("tfrecord"), tmp_path_factory.mktemp("array_record")
  for cls in (tfds_builders.ToyImages, tfds_builders.ToyRagged):
    cls(data_dir=tfrecord).download_and_prepare()
    cls(data_dir=array_record).download_and_prepare(file_format="array_record")
  return {"tfrecord": tfrecord, "array_record": array_record}


@pytest.fixture(autouse=True)
def cache_dir(tmp_path, monkeypatch):
  monkeypatch.setenv("TFDS_JAX_CACHE_DIR", str(tmp_path / "cache"))


@pytest.fixture(scope="module")
def eager(dirs):
  return tfds_jax.load("toy_images", "train", data_dir=dirs["tfrecord"], exclude_keys=["id"], cache=False)


@pytest.fixture(scope="module")
def ra(dirs):
  with tfds_jax.stream("toy_images", "train", data_dir=dirs["array_record"], exclude_keys=["id"]) as s:
    yield s


def _equal(a, b):
  assert jax.tree.structure(a) == jax.tree.structure(b)
  for (path, x), y in zip(jax.tree_util.tree_flatten_with_path(a)[0], jax.tree.leaves(b)):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y), err_msg=jax.tree_util.keystr(path))


def _run(source, state, batch_size, steps):
  out = []
  for _ in range(steps):
    batch, state = tfds_jax.next_batch(source, state, batch_size)
    out.append(batch)
  return out, state


def test_spec_and_metadata(ra, eager):
  assert tfds_jax.element_spec(ra) == tfds_jax.element_spec(eager)
  assert (ra.num_records, ra.name, ra.split, ra.mode) == (N, "toy_images", "train", "random_access")
  assert tfds_jax.info(ra).features["label"].names == ["a", "b", "c"]
  assert "random_access" in repr(ra) and "uint8[8, 8, 1]" in repr(ra)


def test_eager_load_of_array_record_files_equals_tfrecord(dirs, eager):
  from_ar = tfds_jax.load("toy_images", "train", data_dir=dirs["array_record"], exclude_keys=["id"], cache=False)
  _equal(from_ar.data, eager.data)


@settings(max_examples=10)
@given(seed=st.integers(0, 2**32 - 1), batch_size=st.integers(1, N), steps=st.integers(1, 7),
       shuffle=st.booleans())
def test_random_access_order_equals_eager(ra, eager, seed, batch_size, steps, shuffle):
  streamed, s_state = _run(ra, tfds_jax.init(ra, seed=seed, shuffle=shuffle), batch_size, steps)
  loaded, e_state = _run(eager, tfds_jax.init(eager, seed=seed, shuffle=shuffle), batch_size, steps)
  for a, b in zip(streamed, loaded):
    _equal(a, b)
  assert (int(s_state.epoch), int(s_state.index)) == (int(e_state.epoch), int(e_state.index))
  start = seed % (3 * N)
  _equal(tfds_jax.batch_at(ra, start, batch_size, seed if shuffle else None),
         tfds_jax.batch_at(eager, start, batch_size, seed if shuffle else None))


@given(n=st.integers(1, 70_000), epoch=st.integers(0, 2**33), data=st.data(),
       seed=st.one_of(st.none(), st.integers(0, 2**32 - 1)))
def test_host_record_indices_equal_the_sources(n, epoch, data, seed):
  """A stream's reader threads compute indices with numpy; a source's come from jnp."""
  index, size = data.draw(st.integers(0, n - 1)), data.draw(st.integers(1, min(n, 300)))
  offsets = data.draw(st.permutations(range(size)))  # a process's rows, in any order
  want = tfds_jax._source.indices_at(n, np.uint32(epoch % 2**32), np.int32(index),  # pylint: disable=protected-access
                                     np.asarray(offsets, np.int32), None if seed is None else np.uint32(seed))
  np.testing.assert_array_equal(_stream._cpu_record_indices(n, epoch, index, offsets, seed), want)  # pylint: disable=protected-access


def test_jumps_and_repeats_give_the_batch_of_the_state(ra, eager):
  state = tfds_jax.init(ra, seed=5, shuffle=True)
  first, after = tfds_jax.next_batch(ra, state, 8)
  again, _ = tfds_jax.next_batch(ra, state, 8)  # same state: same batch
  _equal(first, again)
  jump = tfds_jax.SourceState(epoch=np.int32(3), index=np.int32(17), seed=state.seed)
  for st_ in (jump, after, jump):  # the read-ahead is dropped and restarted each time
    _equal(tfds_jax.next_batch(ra, st_, 8)[0], tfds_jax.next_batch(eager, st_, 8)[0])


@settings(max_examples=10)
@given(split=st.sampled_from(["train", "train[5:30]+test[2:9]", "test[:50%]+train[-3:]"]),
       data=st.data())
def test_records_by_index_equal_tfds_data_source(dirs, split, data):
  """Our direct ArrayRecord reads return TFDS's records, across files and slices."""
  from tfds_jax import _array_record  # pylint: disable=import-outside-toplevel
  import tensorflow_datasets as tfds  # pylint: disable=import-outside-toplevel
  b = tfds.builder("toy_images", data_dir=dirs["array_record"])
  theirs = b.as_data_source(split=split).data_source
  ours = _array_record.Records(b.info.splits[split].file_instructions)
  try:
    assert len(ours) == len(theirs)
    indices = data.draw(st.lists(st.integers(0, len(ours) - 1), min_size=1, max_size=40))
    assert ours.read(indices) == theirs.__getitems__(indices)
  finally:
    ours.close()
    theirs.__exit__(None, None, None)


@pytest.mark.parametrize("threads,read_ahead", [(1, 0), (1, 3), (4, 1)])
def test_results_do_not_depend_on_threads(dirs, eager, threads, read_ahead):
  with tfds_jax.stream("toy_images", "train", data_dir=dirs["array_record"], exclude_keys=["id"],
                       num_threads=threads, read_ahead=read_ahead) as s:
    streamed, _ = _run(s, tfds_jax.init(s, seed=9, shuffle=True), 7, 13)
  loaded, _ = _run(eager, tfds_jax.init(eager, seed=9, shuffle=True), 7, 13)
  for a, b in zip(streamed, loaded):
    _equal(a, b)


def test_options_behave_as_in_the_eager_source(dirs):
  d = dirs["array_record"]
  for kwargs in (dict(as_supervised=True), dict(include_keys=["meta", "label"]), dict(exclude_keys={"image", "id"})):
    loaded = tfds_jax.load("toy_images", "test", data_dir=dirs["tfrecord"], cache=False, **kwargs)
    with tfds_jax.stream("toy_images", "test", data_dir=d, **kwargs) as s:
      _equal(tfds_jax.batch_at(s, 0, s.num_records), loaded.data)
  with tfds_jax.stream("toy_images", "train[5:15]", data_dir=d, as_supervised=True) as s:
    sliced = tfds_jax.load("toy_images", "train[5:15]", data_dir=dirs["tfrecord"], as_supervised=True, cache=False)
    assert s.num_records == 10
    _equal(tfds_jax.batch_at(s, 0, 10), sliced.data)


def test_strings_are_dropped_with_a_warning_or_refused_by_name(dirs):
  with pytest.warns(UserWarning, match=r"Dropping string feature\(s\) 'id'"):
    with tfds_jax.stream("toy_images", "train", data_dir=dirs["array_record"]) as s:
      assert "id" not in tfds_jax.element_spec(s)
  for mode in dirs:
    with pytest.raises(ValueError, match=r"in a stream of toy_images\[train\], got 'id' \(text, asked for by name: JAX arrays hold numbers only\); pass shapes=\{'id': tfds_jax.encode_text\(9\)\}"):
      tfds_jax.stream("toy_images", "train", data_dir=dirs[mode], include_keys=["id", "label"])


def _resize(record):
  return {**record, "image": tf.image.resize_with_crop_or_pad(record["image"], 4, 4)}


@pytest.mark.parametrize("mode", ["array_record", "tfrecord"])
def test_variable_shapes_need_sizes(dirs, mode):
  with pytest.raises(ValueError, match=r"Expected a static shape for every feature in a stream of toy_ragged\[train\] \(a stream needs every size given\), got 'image' \(shape \(None, None, 1\), shapes seen \[\(4, 5, 1\)") as e:
    tfds_jax.stream("toy_ragged", "train", data_dir=dirs[mode])
  assert "shapes={'image': tfds_jax.resize(" in str(e.value) and "exclude_keys=['image']" in str(e.value)
  batches = []
  for kwargs in (dict(preprocess=_resize), dict(shapes={"image": tfds_jax.crop(4, 4)})):
    with tfds_jax.stream("toy_ragged", "train", data_dir=dirs[mode], **kwargs) as s:
      assert tfds_jax.element_spec(s)["image"].shape == (4, 4, 1)
      batch, _ = tfds_jax.next_batch(s, tfds_jax.init(s), 10)
    images, labels = np.asarray(batch["image"]), np.asarray(batch["label"])
    fills = images[:, 0, 0, 0]  # record i is filled with i
    np.testing.assert_array_equal(images, np.broadcast_to(fills[:, None, None, None], images.shape))
    np.testing.assert_array_equal(np.sort(fills), np.arange(10))
    np.testing.assert_array_equal(fills % 2, labels)
    batches.append(batch)
  np.testing.assert_array_equal(batches[0]["image"], batches[1]["image"])  # the same crop
  fills = np.asarray(batches[1]["image"])[:, 0, 0, 0]
  np.testing.assert_array_equal(batches[1]["image_shape"], [[4 + i % 3, 5 + i % 2, 1] for i in fills])


def test_tf_data_stream_unshuffled_equals_eager(dirs, eager):
  with tfds_jax.stream("toy_images", "train", data_dir=dirs["tfrecord"], exclude_keys=["id"]) as s:
    assert s.mode == "tf.data"
    assert tfds_jax.element_spec(s) == tfds_jax.element_spec(eager)
    streamed, _ = _run(s, tfds_jax.init(s), 15, 6)
  loaded, _ = _run(eager, tfds_jax.init(eager), 15, 6)
  for a, b in zip(streamed, loaded):
    _equal(a, b)


def test_tf_data_stream_reads_files_in_tfds_order(dirs):
  # Two files (a slice of each split): the files interleave exactly as as_dataset reads them.
  split = "train[5:30]+test[2:9]"
  loaded = tfds_jax.load("toy_images", split, data_dir=dirs["tfrecord"], exclude_keys=["id"], cache=False)
  with tfds_jax.stream("toy_images", split, data_dir=dirs["tfrecord"], exclude_keys=["id"]) as s:
    streamed, _ = _run(s, tfds_jax.init(s), 32, 1)
  np.testing.assert_array_equal(np.asarray(streamed[0]["score"]), np.asarray(loaded.data["score"]))


def test_tf_data_stream_shuffles_each_epoch_reproducibly(dirs, eager, caplog):
  kwargs = dict(data_dir=dirs["tfrecord"], exclude_keys=["id"], shuffle_buffer_size=16)
  with tfds_jax.stream("toy_images", "train", **kwargs) as s, tfds_jax.stream("toy_images", "train", **kwargs) as t:
    run, state = _run(s, tfds_jax.init(s, seed=4, shuffle=True), 10, 12)  # three epochs
    scores = np.concatenate([np.asarray(b["score"]) for b in run]).reshape(3, N)
    for epoch in scores:  # every epoch visits each record once
      np.testing.assert_array_equal(np.sort(epoch), np.sort(np.asarray(eager.data["score"])))
    assert not np.array_equal(scores[0], scores[1])  # reshuffled per epoch
    assert not np.array_equal(scores[0], np.asarray(eager.data["score"]))
    again, _ = _run(t, tfds_jax.init(t, seed=4, shuffle=True), 10, 12)  # same seed: same batches
    for a, b in zip(run, again):
      _equal(a, b)
    # Resuming mid-epoch (a state the iterator is not at) re-reads, says so, and matches.
    saved = tfds_jax.state_to_dict(s, tfds_jax.SourceState(np.int32(1), np.int32(20), np.uint32(4)))
    with caplog.at_level(logging.WARNING, logger="tfds_jax"):
      resumed, _ = _run(t, tfds_jax.state_from_dict(t, saved), 10, 6)
    assert "by re-reading 20 records" in caplog.text and "array_record" in caplog.text
    for a, b in zip(resumed, run[6:]):
      _equal(a, b)
    other, _ = _run(t, tfds_jax.init(t, seed=5, shuffle=True), 10, 4)
    assert not np.array_equal(np.asarray(other[0]["score"]), np.asarray(run[0]["score"]))


@pytest.mark.parametrize("mode", ["array_record", "tfrecord"])
def test_resume_after_a_process_restart(dirs, monkeypatch, mode):
  monkeypatch.setenv(testing_factories.TOY_DIR, str(dirs[mode]))  # the fresh process opens this stream
  with tfds_jax.stream("toy_images", "train", data_dir=dirs[mode], exclude_keys=["id"]) as s:
    testing.assert_resumes(s, tfds_jax.init(s, seed=11, shuffle=True), 14, 6, restore_at=5,
                           fresh_process="testing_factories:toy_stream")


def _open_files():
  return len(os.listdir("/proc/self/fd"))


def test_close_stops_threads_and_closes_files(dirs):
  threads, files = threading.active_count(), _open_files()
  with tfds_jax.stream("toy_images", "train", data_dir=dirs["array_record"], exclude_keys=["id"],
                       num_threads=3, read_ahead=2) as s:
    _run(s, tfds_jax.init(s, shuffle=True), 4, 5)
    # The decoder and up to num_threads readers (a pool starts a reader only when none is idle).
    assert 2 <= sum(t.name.startswith(s.thread_name) for t in threading.enumerate()) <= 3 + 1
  assert not any(t.name.startswith(s.thread_name) for t in threading.enumerate())
  assert threading.active_count() <= threads and _open_files() <= files
  with pytest.raises(ValueError, match="Expected an open stream, got a closed one"):
    tfds_jax.next_batch(s, tfds_jax.init(s), 4)
  s.close()  # closing twice is harmless


@pytest.mark.parametrize("cores,read_ahead,expected", [(1, 2, 1), (2, 2, 1), (4, 2, 1), (8, 2, 3),
                                                        (64, 2, 3), (64, 0, 1), (64, 9, 10)])
def test_default_reader_threads_leave_small_machines_to_decoding(monkeypatch, cores, read_ahead, expected):
  monkeypatch.setattr(os, "sched_getaffinity", lambda _: set(range(cores)), raising=False)
  assert _stream.default_threads(_stream.RANDOM_ACCESS, read_ahead) == expected
  assert _stream.default_threads(_stream.TF_DATA, read_ahead) == read_ahead + 1


def _fail_on_record_three(record):
  tf.debugging.assert_none_equal(record["score"], np.float32(3 / 7.0), message="bad record")
  return record


@pytest.mark.parametrize("mode", ["array_record", "tfrecord"])
def test_worker_errors_reach_the_caller(dirs, eager, mode):
  position = int(np.flatnonzero(np.asarray(eager.data["score"]) == np.float32(3 / 7.0))[0])
  with tfds_jax.stream("toy_images", "train", data_dir=dirs[mode], exclude_keys=["id"],
                       preprocess=_fail_on_record_three) as s:
    state = tfds_jax.init(s)
    shard = f"toy_images-train.{'array_record' if mode == 'array_record' else 'tfrecord'}-00000-of-00001"
    match = f"record {position} {'.' if mode == 'array_record' else 'of '}{shard}"
    with pytest.raises(tfds_jax.RecordError, match=match) as e:
      tfds_jax.next_batch(s, state, N)
    assert "bad record" in str(e.value) and e.value.records == [(mode_path(e.value.records[0][0], shard), position)]
    with pytest.raises(tfds_jax.RecordError):  # again (the same state gives the same result), not a hang
      tfds_jax.next_batch(s, state, N)


def mode_path(path, shard):
  assert path.endswith(shard)
  return path


@pytest.mark.parametrize("mode", ["array_record", "tfrecord"])
@pytest.mark.parametrize("shuffle", [False, True])
def test_a_bad_record_fails_its_batch_only_and_nothing_is_skipped(dirs, mode, shuffle):
  kwargs = dict(data_dir=dirs[mode], exclude_keys=["id"], shuffle_buffer_size=16)
  with tfds_jax.stream("toy_images", "train", preprocess=_fail_on_record_three, **kwargs) as bad, \
       tfds_jax.stream("toy_images", "train", **kwargs) as good:
    state = good_state = tfds_jax.init(bad, seed=3, shuffle=shuffle)
    failed = 0
    for _ in range(12):  # three epochs of 40 in batches of 10
      want, good_state = tfds_jax.next_batch(good, good_state, 10)
      try:
        got, state = tfds_jax.next_batch(bad, state, 10)
      except tfds_jax.RecordError as e:
        failed += 1
        assert np.float32(3 / 7.0) in np.asarray(want["score"])  # the batch that holds it
        assert "the error's next_state" in str(e)
        state = e.next_state
        continue
      _equal(got, want)  # every other batch: exactly the records of an undamaged stream
      assert (int(state.epoch), int(state.index)) == (int(good_state.epoch), int(good_state.index))
    assert failed == 3  # once per epoch


def _wait_for_no_threads(prefixes):
  for _ in range(300):
    if not any(t.name.startswith(p) for t in threading.enumerate() for p in prefixes):
      return
    time.sleep(0.1)
  raise AssertionError(f"threads still running: {[t.name for t in threading.enumerate()]}")


def test_streams_dropped_unclosed_stop_their_threads_without_errors(dirs, monkeypatch):
  unraisable, names = [], []
  monkeypatch.setattr(sys, "unraisablehook", unraisable.append)
  for seed in range(4):  # with reads ahead in flight, as when a loop is left early
    s = tfds_jax.stream("toy_images", "train", data_dir=dirs["array_record"], exclude_keys=["id"], read_ahead=3)
    _run(s, tfds_jax.init(s, seed=seed, shuffle=True), 4, 2)
    names.append(s.thread_name)
    del s
  _wait_for_no_threads(names)
  assert not unraisable, [u.exc_value for u in unraisable]


def test_a_pipeline_over_a_stream_goes_on_after_a_bad_record(dirs):
  with tfds_jax.stream("toy_images", "train", data_dir=dirs["array_record"], exclude_keys=["id"],
                       preprocess=_fail_on_record_three) as s:
    pipe = tfds_jax.pipeline(s, tfds_jax.random_flip(), batch_size=N)  # unshuffled: the stream sees seed None
    with pytest.raises(tfds_jax.RecordError) as e:
      tfds_jax.next_batch(pipe, tfds_jax.init(pipe, seed=8))
    assert int(e.value.next_state.seed) == 8 and int(e.value.next_state.epoch) == 1


def test_a_stream_collected_on_its_own_worker_shuts_down_cleanly(dirs, monkeypatch):
  calls, unraisable = [], []
  real = _stream._shutdown

  def recording(*args):
    calls.append(threading.current_thread().name)
    real(*args)

  monkeypatch.setattr(_stream, "_shutdown", recording)
  monkeypatch.setattr(sys, "unraisablehook", unraisable.append)
  gc.disable()  # only the collection we trigger, on the worker, may free the stream
  try:
    s = tfds_jax.stream("toy_images", "train", data_dir=dirs["array_record"], exclude_keys=["id"])
    _run(s, tfds_jax.init(s, seed=1, shuffle=True), 4, 3)
    name, pool = s.thread_name, s._reads  # pylint: disable=protected-access
    cycle = [s]
    cycle.append(cycle)  # unreachable once dropped, freed only by the garbage collector
    del s, cycle
    pool.submit(gc.collect).result()  # the collector runs on a worker thread
  finally:
    gc.enable()
  assert calls and calls[0].startswith(name)  # the finalizer ran on the stream's own worker
  _wait_for_no_threads([name, "tfds_jax_stream_shutdown"])  # and the threads stopped
  assert not unraisable, [u.exc_value for u in unraisable]  # no "cannot join current thread"


def _corrupt_middle(path, n=64):
  raw = bytearray(path.read_bytes())
  for i in range(len(raw) // 2, len(raw) // 2 + n):
    raw[i] ^= 0xFF
  path.write_bytes(bytes(raw))


@pytest.mark.parametrize("mode", ["array_record", "tfrecord"])
def test_damaged_shards_are_named_and_close_never_raises(tmp_path, mode):
  tfds_builders.ToyImages(data_dir=tmp_path).download_and_prepare(file_format=mode)
  train = next((tmp_path / "toy_images").rglob(f"*train.{mode}*"))
  _corrupt_middle(train)
  expected = ("Expected (a readable ArrayRecord file|ArrayRecord file .* to hold at least 40 records)"
              if mode == "array_record"
              else "Expected readable TFRecord files of toy_images\\[train\\], got DataLossError")
  with tfds_jax.stream("toy_images", "train", data_dir=tmp_path, exclude_keys=["id"]) as s:
    state = tfds_jax.init(s)
    for _ in range(5):  # every batch that needs the damaged part says so: no hang, no raw error
      try:
        _, state = tfds_jax.next_batch(s, state, 8)
      except tfds_jax.RecordError as e:
        assert re.search(expected, str(e)) and str(train) in str(e), str(e)
        state = e.next_state
  with pytest.raises(tfds_jax.RecordError, match=expected) as e:
    tfds_jax.load("toy_images", "train", data_dir=tmp_path, exclude_keys=["id"], cache=False)
  assert str(train) in str(e.value)
  if mode == "array_record":
    test = next((tmp_path / "toy_images").rglob("*test.array_record*"))
    with open(test, "r+b") as f:
      f.truncate(test.stat().st_size // 2)
    s = tfds_jax.stream("toy_images", "test", data_dir=tmp_path, exclude_keys=["id"])
    with pytest.raises(tfds_jax.RecordError, match=f"Expected ArrayRecord file {re.escape(str(test))} to hold at least 12 records .* got 0: it is truncated or damaged"):
      tfds_jax.next_batch(s, tfds_jax.init(s), 4)

    class Failing:
      def close(self):
        raise RuntimeError("")  # what a truncated file's reader does

    s._reader._raw._readers[0] = Failing()  # pylint: disable=protected-access
    s.close()  # logged, not raised
    s.close()


def test_bad_input(dirs, ra):
  d = dirs["array_record"]
  with pytest.raises(ValueError, match=r"ArrayRecord files for a random-access stream .* convert them once with `tfds-jax prepare toy_images --file-format array_record --data-dir"):
    tfds_jax.stream("toy_images", "train", data_dir=dirs["tfrecord"], mode="random_access")
  with pytest.raises(ValueError, match="such as \\['test', 'train'\\]"):
    tfds_jax.stream("toy_images", "validation", data_dir=d)
  with pytest.raises(ValueError, match="at most one of include_keys and exclude_keys"):
    tfds_jax.stream("toy_images", "train", data_dir=d, include_keys=["image"], exclude_keys=["id"])
  with pytest.raises(ValueError, match=r"got unknown \['imag'\]"):
    tfds_jax.stream("toy_images", "train", data_dir=d, include_keys=["imag"])
  with pytest.raises(ValueError, match="read_ahead"):
    tfds_jax.stream("toy_images", "train", data_dir=d, read_ahead=-1)
  with pytest.raises(FileNotFoundError, match="local_files_only"):
    tfds_jax.stream("toy_images", "train", data_dir=d / "empty", local_files_only=True)
  state = tfds_jax.init(ra)
  with pytest.raises(ValueError, match=f"Expected 1 <= batch_size <= {N}"):
    tfds_jax.next_batch(ra, state, N + 1)
  with pytest.raises(TypeError, match="call next_batch\\(stream, ...\\) outside jit"):
    jax.jit(lambda st_: tfds_jax.next_batch(ra, st_, 4)[0])(state)
  with pytest.raises(ValueError, match="belongs to another dataset"):
    tfds_jax.next_batch(ra, tfds_jax.SourceState(np.int32(0), np.int32(N), None), 4)
  with pytest.raises(ValueError, match="saved for 10 records"):
    small = tfds_jax.from_arrays({"x": np.arange(10)})
    tfds_jax.state_from_dict(ra, tfds_jax.state_to_dict(small, tfds_jax.init(small)))
  with tfds_jax.stream("toy_images", "train", data_dir=dirs["tfrecord"], exclude_keys=["id"]) as s:
    with pytest.raises(ValueError, match="random-access stream for batch_at"):
      tfds_jax.batch_at(s, 0, 4)


def test_options_are_checked_before_any_work(dirs):
  for bad in (0, -1, 2.5):  # tf.data's error blamed the files ("damaged") at the first shuffled read
    with pytest.raises(ValueError, match=f"Expected shuffle_buffer_size to be a positive int, got {bad}"):
      tfds_jax.stream("toy_images", "train", data_dir=dirs["tfrecord"], shuffle_buffer_size=bad)
  kwargs = dict(data_dir=dirs["array_record"], exclude_keys=["id"])
  tfds_jax.load("toy_images", "train", **kwargs)
  from tfds_jax import _cache  # pylint: disable=import-outside-toplevel
  _cache.flush()  # cached: from_tfds's cached path returned before checking the options
  with pytest.raises(TypeError, match=r"Expected options of load or stream, got unknown \['batch_size'\]"):
    tfds_jax.from_tfds("toy_images", "train", batch_size=4, **kwargs)
  with pytest.raises(ValueError, match="Expected memory_budget to be None or a number of bytes >= 0, got -5"):
    tfds_jax.from_tfds("toy_images", "train", memory_budget=-5, **kwargs)
  assert isinstance(tfds_jax.from_tfds("toy_images", "train", **kwargs), tfds_jax.Source)


def test_from_tfds_chooses_by_decoded_size(dirs, caplog, monkeypatch):
  d = dirs["array_record"]
  record = 8 * 8 + 4 + 4 + 4 + 8  # image, label, score, meta/a, meta/b (id is a string)
  caplog.set_level(logging.INFO, logger="tfds_jax")
  small = tfds_jax.from_tfds("toy_images", "train[:25%]", data_dir=d, exclude_keys=["id"], cache=False)
  assert isinstance(small, tfds_jax.Source) and small.num_records == 10
  assert f"eager: toy_images[train[:25%]] is {10 * record}.0 B decoded (10 records)" in caplog.text
  with tfds_jax.from_tfds("toy_images", "train", data_dir=d, exclude_keys=["id"], memory_budget=100) as big:
    assert isinstance(big, tfds_jax.Stream) and big.mode == "random_access"
  assert f"streaming: toy_images[train] is {N * record / 1024:.1f} KiB decoded" in caplog.text
  with tfds_jax.from_tfds("toy_images", "train", data_dir=d, eager=False, exclude_keys=["id"]) as forced:
    assert isinstance(forced, tfds_jax.Stream)
  with pytest.raises(ValueError, match=r"shapes=\{'image': tfds_jax.resize\("):
    _stream.choose("toy_ragged", "train", data_dir=d)
  cropped = tfds_jax.from_tfds("toy_ragged", "train", data_dir=d, shapes={"image": tfds_jax.crop(4, 4)})
  assert isinstance(cropped, tfds_jax.Source)
  assert "eager: toy_ragged[train] is 320.0 B decoded (10 records)" in caplog.text  # 16 + 12 + 4 B each
  with tfds_jax.from_tfds("toy_ragged", "train", data_dir=d, preprocess=_resize) as ragged:
    assert tfds_jax.element_spec(ragged)["image"].shape == (4, 4, 1)
  assert "streaming: preprocess= runs per record" in caplog.text
  reads = []
  monkeypatch.setattr(tfds_jax._array_record, "read_all", lambda *a, **k: reads.append(a))
  with pytest.raises(ValueError, match=r"fit in memory for eager=True, got toy_images\[train\] is .* and 100.0 B of memory_budget"):
    tfds_jax.from_tfds("toy_images", "train", data_dir=d, eager=True, memory_budget=100)
  with pytest.raises(ValueError, match=r"shapes=\{'image': tfds_jax.resize\("):
    tfds_jax.from_tfds("toy_ragged", "train", data_dir=d, eager=True)
  with pytest.raises(TypeError, match=r"unknown \['shuffle'\]"):
    tfds_jax.from_tfds("toy_images", "train", data_dir=d, shuffle=True)
  assert not reads  # refused before reading


def test_decoded_size_of_a_sliced_split(dirs):
  b = tfds_jax._tfds.builder("toy_images", data_dir=dirs["tfrecord"])
  nbytes, n, _ = _stream.decoded_bytes(b, "train[5:15]", ["image", "label"], None, None, set())
  assert (nbytes, n) == (10 * (64 + 4), 10)
