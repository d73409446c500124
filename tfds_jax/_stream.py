"""Streams: datasets larger than memory, read from disk as batches are asked for.

A :class:`Stream` is driven by the same functions as a :class:`Source`:
``init``, ``next_batch`` and ``element_spec`` (and ``batch_at`` for random
access), with the same :class:`SourceState`, and the same promise: the same
state always gives the same batch, so a saved state resumes exactly.

Two readers sit behind it:

* random access (datasets prepared as ArrayRecord): batch ``k`` holds exactly
  the records :func:`record_indices` names, in the same ``index_shuffle`` order
  as an eager source with the same seed. Worker threads read and decode the
  next ``read_ahead`` batches ahead of time, keyed by position: a state the
  reader did not expect (a restore, a jump) drops them and starts there.
* tf.data (TFRecord only): records in file order, shuffled per epoch through a
  buffer seeded from ``(seed + epoch) mod 2**32``, with a fixed prefetch
  buffer. Resuming mid-epoch re-reads the epoch up to the saved position.

A stream owns threads and open files: use it as a context manager or call
:meth:`Stream.close`; a stream that is dropped unclosed is shut down when it is
collected, on whatever thread that happens (never joining itself). It reads
files, so it runs outside ``jit``: call ``next_batch`` in Python and pass the
batch into the jitted step.

A record that fails to read or decode is a :class:`RecordError` naming the
record (its file and index in the file) for the batch that holds it; nothing
is skipped, and the stream stays usable: the error's ``next_state`` is the
state after that batch.
"""

from __future__ import annotations

import collections
import concurrent.futures
import logging
import os
import threading
import time
import warnings
import weakref
from typing import Any, Callable, Iterable, Mapping

import jax
import jax.numpy as jnp
import numpy as np

from tfds_jax import _array_record
from tfds_jax import _cache
from tfds_jax import _features
from tfds_jax import _sharding
from tfds_jax import _shuffle
from tfds_jax import _source
from tfds_jax import _tf
from tfds_jax import _tfds
from tfds_jax._array_record import RecordError
from tfds_jax._source import Source, SourceState
from tfds_jax._types import Batch

log = logging.getLogger("tfds_jax")

RANDOM_ACCESS = "random_access"
TF_DATA = "tf.data"
_Key = tuple  # (epoch, index, size, seed or None[, rows]): a batch (or this process's rows of it)


class Stream:
  """A dataset read from disk batch by batch; drive it with ``next_batch``.

  Made by :func:`stream` (or :func:`from_tfds`). Not a pytree: it holds files
  and threads. Its data is fixed; where a run stands lives in the
  :class:`SourceState` you pass in.

  Attributes:
    name: dataset name, as for a :class:`Source`.
    split: split string.
    info: a :class:`DatasetInfoRef` (get the ``DatasetInfo`` with ``info``).
    num_records: records in the split.
    mode: ``"random_access"`` (ArrayRecord files) or ``"tf.data"`` (TFRecord).
    truncated: feature path -> records cut so far by options with
      ``truncate=True`` (the first cut of each feature is logged).
  """

  def __init__(self, *, name, split, info, reader, mode, read_ahead, num_threads, device):
    self.name, self.split, self.info, self.mode = name, split, info, mode
    self.num_records = reader.num_records
    self._reader, self._device = reader, device
    self._spec = {p: jax.ShapeDtypeStruct(shape, dtype) for p, (shape, dtype) in reader.spec.items()}
    self._truncated: dict = {}  # feature path -> records delivered truncated
    self._reported: set = set()  # features whose truncation was logged
    self._read_ahead = read_ahead
    self._lock = threading.Lock()  # one caller at a time; workers never take it
    self._queue: collections.deque = collections.deque()  # (key, future), oldest first
    self._last: tuple[_Key, Batch, dict] | None = None  # the last batch, and what it truncated
    self._expected: _Key | None = None  # tf.data: the key its iterator is at
    self._iterator = None
    self.thread_name = f"tfds_jax_stream_{id(self):x}"  # names this stream's workers
    # Random access runs two stages: `num_threads` threads read records from
    # the files, one thread decodes batches in order (TensorFlow spreads each
    # decode over the cores). Reading batch k + 1 overlaps decoding batch k,
    # and no two decodes compete for the cores, which keeps steps even.
    pool = lambda n: concurrent.futures.ThreadPoolExecutor(n, thread_name_prefix=self.thread_name)  # noqa: E731
    self._reads, self._decodes = (pool(num_threads), pool(1)) if mode == RANDOM_ACCESS else (None, None)
    self._closed = False
    # Workers hold the reader, never the stream, so dropping the stream collects it;
    # the finalizer may then run on any thread, a worker's included (see _shutdown).
    self._finalizer = weakref.finalize(self, _shutdown, (self._reads, self._decodes), reader,
                                       self.thread_name)

  def __repr__(self) -> str:
    spec = _features.unflatten({p: f"{v.dtype}{list(v.shape)}" for p, v in self._spec.items()})
    return (f"Stream({self.name}[{self.split}], {self.mode}, num_records={self.num_records},"
            f" data={spec})")

  def __enter__(self) -> "Stream":
    return self

  def __exit__(self, *exc) -> None:
    self.close()

  def close(self) -> None:
    """Stops the workers and closes the files; the stream cannot be read after.

    Never raises (a file that fails to close, a damaged one, is logged), and
    may be called from any thread, any number of times.
    """
    with self._lock:
      self._closed = True
      self._drop()
      self._iterator = None
      self._finalizer()

  @property
  def truncated(self) -> dict:
    """Feature path -> records cut so far by options with ``truncate=True``."""
    return dict(self._truncated)

  def element_spec(self) -> dict:
    """Feature name -> ``ShapeDtypeStruct`` of one record, nested as TFDS nests them."""
    return _features.unflatten(self._spec)

  def next_batch(self, state: SourceState, batch_size: int, *,
                 sharding=None) -> tuple[Batch, SourceState]:
    """See :func:`tfds_jax.next_batch`.

    Raises:
      RecordError: records of the batch failed to read or decode; its
        ``next_state`` is the state after this batch, to go on from.
    """
    _source._check_batch_size(self.num_records, batch_size)  # pylint: disable=protected-access
    key = (*_concrete_position(state, self.num_records, self._label()), batch_size,
           _concrete_seed(state.seed))
    epoch, index = _advance(key, self.num_records)
    after = SourceState(epoch=jnp.asarray(epoch, jnp.int32), index=jnp.asarray(index, jnp.int32),
                        seed=state.seed)
    try:
      batch = self._sharded(key, sharding)
    except RecordError as e:
      e.next_state = after
      e.args = (f"{e} The stream stays usable: the error's next_state (epoch {epoch}, index"
                f" {index}) is the state after this batch.",)
      raise
    return batch, after

  def _label(self) -> str:
    return f"{self.name}[{self.split}]"

  def batch_at(self, start: int, size: int, seed, *, sharding=None) -> Batch:
    """See :func:`tfds_jax.batch_at`; random-access streams only."""
    if self.mode != RANDOM_ACCESS:
      raise ValueError(
          f"Expected a random-access stream for batch_at, got a tf.data stream of"
          f" {self.name}[{self.split}] (TFRecord files); convert it to ArrayRecord once with"
          f" `{_tfds.convert_command(self.name, self.info.data_dir)}`, or use next_batch.")
    if isinstance(start, jax.core.Tracer) or isinstance(seed, jax.core.Tracer):
      raise TypeError(_TRACED)
    start = _source.check_start(start)
    _source._check_batch_size(self.num_records, size, "size")  # pylint: disable=protected-access
    epoch, index = divmod(start, self.num_records)
    seed = None if seed is None else int(_source.as_seed(seed))
    return self._sharded((epoch, index, size, seed), sharding)

  def _sharded(self, key: _Key, sharding) -> Batch:
    """The batch at ``key``; with a sharding, each process reads only its rows."""
    if sharding is None:
      return self._batch(key)
    size = key[2]
    _sharding.batch_axes(sharding, size)
    if jax.process_count() == 1:
      return jax.device_put(self._batch(key), _sharding.batch_sharding(sharding))
    if self.mode != RANDOM_ACCESS:
      raise ValueError(
          f"Expected a random-access stream in a multi-process run, got a tf.data stream of"
          f" {self.name}[{self.split}] (TFRecord files), which cannot read one process's rows"
          f" alone; convert it to ArrayRecord once with"
          f" `{_tfds.convert_command(self.name, self.info.data_dir)}`.")
    rows = tuple(int(r) for r in _sharding.process_rows(sharding, size))
    return _sharding.assemble(self._batch((*key, rows)), size, sharding)

  def _batch(self, key: _Key) -> Batch:
    with self._lock:
      if self._closed:
        raise ValueError(f"Expected an open stream, got a closed one ({self!r}); make a new one"
                         " with tfds_jax.stream.")
      if self._last is None or self._last[0] != key:
        self._last = (key, *(self._random_access(key) if self.mode == RANDOM_ACCESS else self._tf_data(key)))
      _, batch, cut = self._last
      self._count_truncated(cut)  # counted as delivered (read-ahead is not delivered yet)
      return batch

  def _random_access(self, key: _Key) -> Batch:
    if not self._queue or self._queue[0][0] != key:
      self._drop()  # an unexpected position: what was read ahead is of no use
      self._queue.append(self._submit(key))
    _, _, future = self._queue.popleft()
    last = self._queue[-1][0] if self._queue else key
    while len(self._queue) < self._read_ahead:
      last = (*_advance(last, self.num_records), *last[2:])
      self._queue.append(self._submit(last))
    try:
      return future.result()
    except BaseException:
      self._drop()
      raise

  def _submit(self, key: _Key) -> tuple[_Key, concurrent.futures.Future, concurrent.futures.Future]:
    read = self._reads.submit(_read, self._reader, self.num_records, key)
    return key, read, self._decodes.submit(_decode, self._reader, read, self._spec, self._device)

  def _count_truncated(self, cut: Mapping) -> None:
    for path, count in cut.items():
      self._truncated[path] = self._truncated.get(path, 0) + count
      if path not in self._reported:
        self._reported.add(path)
        log.warning("truncating %s of %s (truncate=True): %d record(s) of this batch;"
                    " stream.truncated counts them", _features.name(path), self._reader.label, count)

  def _tf_data(self, key: _Key) -> Batch:
    tf, _ = _tf.import_tf()
    epoch, index, size, seed = key[:4]
    resumed = self._expected != key
    if resumed:
      self._iterator = None
      start = time.perf_counter()
      self._iterator = iter(self._reader.batches(epoch, index, size, seed))
    try:
      tensors = next(self._iterator)
    except tf.errors.OpError as e:  # the next call starts afresh at its own position
      self._expected = self._iterator = None
      raise self._reader.failure(e, epoch, index, size, seed) from e
    if resumed and index:
      log.warning(
          "resumed the tf.data stream of %s at epoch %d, position %d by re-reading %d"
          " records (%.2fs); ArrayRecord files resume instantly: `%s`.", self._reader.label, epoch,
          index, index, time.perf_counter() - start, _tfds.convert_command(self.name, self.info.data_dir))
    self._expected = (*_advance(key, self.num_records), size, seed)
    cut: dict = {}
    return _batch_to_jax(self._reader.finish(epoch, index, tensors, cut), self._spec, self._device,
                         self._reader.label), cut

  def _drop(self) -> None:
    for _, read, decoded in self._queue:
      decoded.cancel()  # running ones finish on their own and are discarded
      read.cancel()
    self._queue.clear()
    self._last = None
    self._expected = None


def _read(reader, n: int, key: _Key) -> tuple[np.ndarray, list[bytes]]:
  """Runs on a reader thread: the indices and serialized records of the batch at ``key``."""
  epoch, index, size, seed = key[:4]
  offsets = key[4] if len(key) > 4 else range(size)  # this process's rows, or all
  rows = _cpu_record_indices(n, epoch, index, offsets, seed)
  return rows, reader.records(rows)


def _decode(reader, read: concurrent.futures.Future, spec, device) -> tuple[Batch, dict]:
  """Runs on the decoder thread, in submission order: a read batch, decoded and on the device,
  and the records of it that were truncated."""
  indices, records = read.result()
  cut: dict = {}
  return _batch_to_jax(reader.finish(indices, reader.decode(indices, records), cut), spec, device,
                       reader.label), cut


def _batch_to_jax(tensors: Mapping, spec, device, label: str) -> Batch:
  """A flat decoded batch (path -> TF tensor) as a nested batch on the device."""
  return _features.unflatten({p: _to_jax(_features.name(p), v, spec[p].dtype, device, label)
                              for p, v in tensors.items()})


def _shutdown(pools, reader, thread_name: str) -> None:
  """Stops the workers, then closes the files; never raises.

  It runs from ``close`` or from the finalizer of a collected stream, which
  runs wherever the stream was collected: possibly on one of its own workers
  (the garbage collector runs on whichever thread triggers it). A worker
  cannot join itself, so there the work is handed to a new thread.
  """
  if threading.current_thread().name.startswith(thread_name):
    threading.Thread(target=_shutdown, args=(pools, reader, thread_name),
                     name="tfds_jax_stream_shutdown").start()
    return
  try:
    for pool in pools:  # readers first: a decode waiting on a cancelled read ends at once
      if pool is not None:
        pool.shutdown(wait=True, cancel_futures=True)
    reader.close()
  except Exception as e:  # pylint: disable=broad-except  # closing must not fail the caller
    log.warning("shutting down the stream %s failed (%s: %s)", getattr(reader, "label", ""),
                type(e).__name__, e)


_TRACED = ("Expected a concrete state or position, got a traced one; a stream reads files,"
           " so call next_batch(stream, ...) outside jit and pass the batch into your jitted"
           " step (or load the dataset eagerly to read inside jit).")


def _concrete_position(state: SourceState, n: int, label: str) -> tuple[int, int]:
  if isinstance(state, SourceState) and any(isinstance(x, jax.core.Tracer) for x in state):
    raise TypeError(_TRACED)
  _source.check_state(state, n, label)  # types and ranges
  return int(state.epoch), int(state.index)


def _concrete_seed(seed) -> int | None:
  return None if seed is None else int(seed)


def _advance(key: _Key, n: int) -> tuple[int, int]:
  epoch, index, size = key[:3]
  return (epoch + 1, index + size - n) if index + size >= n else (epoch, index + size)


def _cpu_record_indices(n: int, epoch: int, index: int, offsets: Iterable[int],
                        seed: int | None) -> np.ndarray:
  """Records at positions ``index + offsets`` (``_source.indices_at``'s values),
  computed with numpy on the host: a reader thread compiles nothing."""
  j = index + np.asarray(list(offsets), np.int64)
  wrapped = j >= n  # positions past the end continue in the next epoch
  pos = np.where(wrapped, j - n, j)
  if seed is None:
    return pos.astype(np.int32)
  out = np.empty_like(pos)
  for w, s in ((False, seed + epoch), (True, seed + epoch + 1)):
    out[wrapped == w] = _shuffle.host_permute(pos[wrapped == w], s, n - 1)
  return out.astype(np.int32)


def _to_jax(key: str, tensor, dtype, device, label: str) -> jax.Array:
  """A CPU TF tensor as a JAX array on ``device``: shared through DLPack when the
  dtype is already JAX's, else converted (integers range-checked)."""
  if tensor.dtype.as_numpy_dtype == dtype and hasattr(tensor, "__dlpack__"):  # TF 2.18 tensors lack it
    x = jax.dlpack.from_dlpack(tensor)
  else:
    x = _tfds.to_jax_dtype(key, tensor.numpy(), np.dtype(dtype), label)
  return jax.device_put(x, device)


class _TFDataReader:
  """Batches of a TFRecord split through tf.data, from any (epoch, index).

  Serialized records are read in TFDS's file order, shuffled per epoch, then
  decoded (TFDS's decoding, ``preprocess`` and ``shapes``) in parallel and in
  order, and padded per batch.
  """

  def __init__(self, b, split, keys, *, decoders, preprocess, shapes, asked, label,
               shuffle_buffer_size, read_ahead, num_threads):
    tf, _ = _tf.import_tf()
    self.label = label
    self.num_records = _tfds._split_size(b, split)  # pylint: disable=protected-access
    if self.num_records is None:
      raise ValueError(f"Expected {label} to list its split sizes in its dataset info, got none;"
                       " stream a prepared dataset, or load it eagerly.")
    self._shuffle_buffer, self._read_ahead = shuffle_buffer_size, read_ahead
    self._read_args = (b, split, num_threads)
    decode, spec = _array_record.record_decoder(b, keys, decoders=decoders, preprocess=preprocess)
    one = tf.function(decode, input_signature=[tf.TensorSpec([], tf.string)])
    self.plan = plan = _features.plan_for(
        b, spec, keys, shapes=shapes, eager=False, asked=asked, label=label, what="a stream",
        user_fns=bool(decoders or preprocess),
        peek=lambda: [tf.nest.map_structure(lambda t: t.numpy(), one(r))
                      for r in self._serialized(False).take(8)])
    self.spec = plan.spec
    self._padding = _features.padding(plan)

    fix, cut = _features.applier(plan), _features.applier(plan, pad=False)

    def static(serialized):  # traced inline into the tf.data map (no function call per record)
      return cut(decode(serialized))

    self._decoding = static
    self._one = tf.function(lambda r: fix(decode(r)),  # to blame a record alone
                            input_signature=[tf.TensorSpec([], tf.string)])

  def batches(self, epoch: int, index: int, size: int, seed: int | None):
    """tf.data.Dataset of ``size``-record batches from position ``index`` of ``epoch`` on.

    Records are shuffled serialized and decoded after the shuffle, in parallel
    and in order, so any position is reached without decoding the records
    before it: after a record fails to decode, the next batch starts afresh
    at its own position (see :meth:`failure`), and nothing is skipped.
    """
    tf, _ = _tf.import_tf()
    ds = self._shuffled(epoch, index, seed).map(self._decoding, num_parallel_calls=self._read_args[-1],
                                                 deterministic=True)
    ds = ds.padded_batch(size, *self._padding, drop_remainder=True).prefetch(self._read_ahead)
    options = tf.data.Options()
    options.autotune.enabled = False
    options.deterministic = True
    return ds.with_options(options)

  def finish(self, epoch: int, index: int, tensors, truncated: dict) -> dict:
    """A batch read at (epoch, index) checked against the plan: path -> tensor; the records
    it truncated are added to ``truncated``."""
    where = lambda row: (f"the record at position {(index + row) % self.num_records} of epoch"  # noqa: E731
                         f" {epoch + (index + row) // self.num_records} (in shuffled order)")
    return _features.flatten(_features.check(self.plan, tensors, where, truncated))

  def _shuffled(self, epoch: int, index: int, seed: int | None, where: bool = False):
    """Serialized records from position ``index`` of ``epoch`` on (with ``where``:
    ``(where, record)`` pairs, see :meth:`_serialized`)."""
    tf, _ = _tf.import_tf()
    records, buffer = self._serialized(where), self._shuffle_buffer

    def one_epoch(e):
      if seed is None:
        return records
      epoch_seed = tf.math.floormod(tf.constant(seed, tf.int64) + e, 2**32)
      return records.shuffle(buffer, seed=epoch_seed, reshuffle_each_iteration=False)

    return tf.data.Dataset.range(epoch, 2**62).flat_map(one_epoch).skip(index)

  def failure(self, error, epoch: int, index: int, size: int, seed: int | None) -> RecordError:
    """The error for the batch at (epoch, index) whose read failed with ``error``.

    Reads that batch's serialized records again: if the files cannot be read,
    they are damaged (named); else each record is decoded alone to name the
    failing ones.
    """
    tf, _ = _tf.import_tf()
    b, split, _ = self._read_args
    try:
      batch = list(self._shuffled(epoch, index, seed, where=True).take(size).as_numpy_iterator())
    except tf.errors.OpError as damage:
      return _array_record.damaged(b, split, self.label, damage,
                                   f"reading the batch at epoch {epoch}, position {index}")
    files = self._files()
    names = [(f"record {int(i)} of {os.path.basename(files[int(f)])}", (files[int(f)], int(i)))
             for (f, i), _ in batch]
    return _array_record.blame(self._one, names, [x for _, x in batch], self.label, error)

  def _serialized(self, where: bool):
    """The split's serialized records in the order ``as_dataset`` reads them (files
    interleaved as TFDS's default ``ReadConfig`` does); with ``where``, as
    ``((file number, index in file), record)`` pairs."""
    tf, tfds = _tf.import_tf()
    b, split, _ = self._read_args
    files = self._files()
    adapter = tfds.core.file_adapters.ADAPTER_FOR_FORMAT[
        b.info.file_format or tfds.core.file_adapters.FileFormat.TFRECORD]
    fi = b.info.splits[split].file_instructions

    def one_file(f, path, skip, take):
      records = adapter.make_tf_data(path).skip(skip).take(take)
      if not where:
        return records
      return tf.data.Dataset.zip((tf.data.Dataset.range(skip, skip + take).map(
          lambda i: tf.stack([f, i])), records))

    cycle = 1 if b.info.disable_shuffling else 16  # TFDS's default interleave_cycle_length
    return tf.data.Dataset.from_tensor_slices(
        (np.arange(len(files), dtype=np.int64), files, np.array([int(x.skip) for x in fi], np.int64),
         np.array([int(x.take) for x in fi], np.int64))).interleave(
             one_file, cycle_length=cycle, block_length=tfds.ReadConfig().interleave_block_length,
             num_parallel_calls=1, deterministic=True)

  def _files(self) -> list[str]:
    b, split, _ = self._read_args
    return [os.fspath(fi.filename) for fi in b.info.splits[split].file_instructions]

  def close(self) -> None:
    self._decoding = None


@_tf.quiet
def stream(
    name: str,
    split: str,
    *,
    data_dir: str | os.PathLike | None = None,
    as_supervised: bool = False,
    include_keys: Iterable[str] | None = None,
    exclude_keys: Iterable[str] | None = None,
    decoders: Mapping[str, Any] | None = None,
    shapes: Mapping[str | tuple, _features.FixedShape] | None = None,
    preprocess: Callable[[dict], dict] | None = None,
    read_ahead: int = 2,
    num_threads: int | None = None,
    shuffle_buffer_size: int = 10_000,
    mode: str | None = None,
    download: bool = True,
    local_files_only: bool = False,
    try_gcs: bool = False,
    download_and_prepare_kwargs: Mapping[str, Any] | None = None,
    beam_num_workers: int | None = None,
    device: jax.Device | jax.sharding.Sharding | None = None,
) -> Stream:
  """Opens a TFDS split for streaming: records are read from disk as batches are asked for.

  Datasets prepared as ArrayRecord are read by random access: a shuffled
  stream visits exactly the records, in exactly the order, of an eager
  :func:`load` with the same seed, and any saved state resumes at once.
  TFRecord datasets stream through tf.data (shuffle buffer, resume by
  re-reading). Records of one batch are decoded in one TensorFlow call, with
  ``read_ahead`` batches read and decoded ahead of the one asked for.

  Args:
    name: TFDS name, as for :func:`load`.
    split: split string, slices included.
    data_dir: where TFDS keeps prepared datasets.
    as_supervised: only the dataset's ``supervised_keys``, as a dict.
    include_keys: read only these top-level features.
    exclude_keys: read all top-level features but these.
    decoders: TFDS decoders per feature.
    shapes: how features whose shape varies (or strings) get a static one, as
      for :func:`load`, applied per record after ``preprocess``; a stream needs
      every size given (``tfds_jax.pad(100)``, ``resize(224, 224)``,
      ``encode_text(512)``, ...), since it cannot know the longest record.
    preprocess: a function run per record inside TensorFlow, after decoding and
      before ``shapes`` and batching, on the record as TFDS gives it (a nested
      ``{name: tf.Tensor}`` dict); it returns a dict of the same kind. A
      feature it leaves with an unknown shape needs ``shapes`` or
      ``tf.ensure_shape``.
    read_ahead: batches read ahead of the one asked for (a fixed bound, never
      autotuned); 0 reads on demand.
    num_threads: random access: threads reading records from the files, while
      one more thread decodes batches in order (each decode is spread over
      the cores inside TensorFlow); default ``read_ahead + 1``, but no more
      than half the cores minus one, so that on small machines reads do not
      compete with decoding (1 on 2 cores). tf.data: records decoded in
      parallel (default ``read_ahead + 1``).
    shuffle_buffer_size: tf.data streams only: records in the shuffle buffer.
    mode: ``"random_access"`` or ``"tf.data"``; default: random access when the
      files are ArrayRecord, else tf.data.
    download: prepare the dataset if it is not prepared yet.
    local_files_only: never download or prepare; fail if nothing is prepared.
    try_gcs: let TFDS read prepared files from its public GCS bucket.
    download_and_prepare_kwargs: passed to ``builder.download_and_prepare``
      (``{"file_format": "array_record"}`` prepares for random access).
    beam_num_workers: Beam DirectRunner processes for Beam-based datasets.
    device: where batches go (default: JAX's default device).

  Returns:
    An open :class:`Stream`; close it (or use ``with``) when done.

  Raises:
    ValueError: as :func:`load` for bad names, splits and keys; a string
      feature asked for by name without an encoding; a feature whose shape
      varies without a size in ``shapes``; ``mode="random_access"`` on
      TFRecord files; bad ``read_ahead``, ``num_threads``,
      ``shuffle_buffer_size`` or ``beam_num_workers``.
    TypeError: as :func:`load` for a name or split that is not a string, or
      a ``device`` that is not a device or sharding.
    FileNotFoundError: nothing prepared while ``local_files_only``.

  A record that fails to read or decode later makes ``next_batch`` raise a
  :class:`RecordError` naming it (file and index); the stream stays usable.

  Example:
    >>> import tfds_jax
    >>> with tfds_jax.stream("digits", "train") as s:  # doctest: +SKIP
    ...   state = tfds_jax.init(s, seed=0, shuffle=True)
    ...   batch, state = tfds_jax.next_batch(s, state, 32)
    >>> batch["image"].shape  # doctest: +SKIP
    (32, 8, 8, 1)
  """
  _tfds.check_request(name, split, device=device, beam_num_workers=beam_num_workers, data_dir=data_dir,
                      file_format=_tfds.prepare_format(download_and_prepare_kwargs))
  if include_keys is not None and exclude_keys is not None:
    raise ValueError(
        f"Expected at most one of include_keys and exclude_keys, got both"
        f" ({sorted(include_keys)} and {sorted(exclude_keys)}); keep one.")
  if not isinstance(read_ahead, int) or read_ahead < 0:
    raise ValueError(f"Expected read_ahead to be an int >= 0, got {read_ahead!r}.")
  if num_threads is not None and (not isinstance(num_threads, int) or num_threads < 1):
    raise ValueError(f"Expected num_threads to be a positive int, got {num_threads!r}.")
  if (isinstance(shuffle_buffer_size, bool) or not isinstance(shuffle_buffer_size, int)
      or shuffle_buffer_size < 1):  # tf.data's error would blame the files at the first shuffled read
    raise ValueError(f"Expected shuffle_buffer_size to be a positive int, got {shuffle_buffer_size!r};"
                     " pass the records a tf.data stream shuffles among (default 10,000).")
  if mode not in (None, RANDOM_ACCESS, TF_DATA):
    raise ValueError(f"Expected mode to be None, {RANDOM_ACCESS!r} or {TF_DATA!r}, got {mode!r}.")
  b = _tfds.builder(name, data_dir=data_dir, try_gcs=try_gcs)
  _tfds.ensure_prepared(b, download=download, local_files_only=local_files_only,
                        download_and_prepare_kwargs=download_and_prepare_kwargs,
                        beam_num_workers=beam_num_workers)
  _tfds.check_readable(b)
  array_record = _tfds.file_format(b) == "array_record"
  if mode == RANDOM_ACCESS and not array_record:
    raise ValueError(
        f"Expected ArrayRecord files for a random-access stream of {_tfds.full_name(b)!r}, got"
        f" {_tfds.file_format(b)} files in {b.data_dir}; convert them once with"
        f" `{_tfds.convert_command(_tfds.full_name(b), b.data_dir)}` (or tfds_jax.prepare(...,"
        " file_format='array_record'): it writes ArrayRecord files next to these), or use"
        " mode='tf.data'.")
  if mode == TF_DATA and array_record:
    raise ValueError(f"Expected TFRecord files for a tf.data stream of {_tfds.full_name(b)!r}, got ArrayRecord"
                     f" files in {b.data_dir}; use mode='random_access' (the default for them).")
  mode = RANDOM_ACCESS if array_record else TF_DATA
  if num_threads is None:
    num_threads = default_threads(mode, read_ahead)
  _tfds._split_size(b, split)  # pylint: disable=protected-access  # unknown split: clear error
  keys, asked = _tfds.select_keys(b, as_supervised=as_supervised, include_keys=include_keys,
                                  exclude_keys=exclude_keys, decoders=decoders)
  full_name = _tfds.full_name(b)
  label = f"{full_name}[{split}]"
  if mode == RANDOM_ACCESS:
    reader = _array_record.RandomAccessReader(
        b, split, keys, decoders=decoders, preprocess=preprocess, shapes=shapes, eager=False,
        asked=asked, label=label)
  else:
    reader = _TFDataReader(b, split, keys, decoders=decoders, preprocess=preprocess, shapes=shapes,
                           asked=asked, label=label, shuffle_buffer_size=shuffle_buffer_size,
                           read_ahead=read_ahead, num_threads=num_threads)
  return Stream(name=full_name, split=split, info=_tfds.info_ref(b), reader=reader, mode=mode,
                read_ahead=read_ahead, num_threads=num_threads, device=device)


def default_threads(mode: str, read_ahead: int) -> int:
  """``stream``'s default ``num_threads`` on this machine (see its docstring)."""
  if mode == TF_DATA:
    return read_ahead + 1
  cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
  return max(1, min(read_ahead + 1, cores // 2 - 1))


def decoded_bytes(b, split: str, keys: list[str], decoders, shapes, asked: set[str]
                  ) -> tuple[int | None, int, _features.Plan]:
  """(decoded bytes of ``split`` as an eager load holds it, or None; its records; the plan).

  None when some feature is padded to the split's longest record, unknown
  before reading. From the dataset info and a trace of the decoders: no record
  is read.
  """
  n = _tfds._split_size(b, split)  # pylint: disable=protected-access
  label = f"{_tfds.full_name(b)}[{split}]"
  if n is None:
    raise ValueError(f"Expected {label} to list its split sizes in its dataset info, got none;"
                     " pass eager=True or False to from_tfds.")
  _, spec = _array_record.record_decoder(b, keys, decoders=decoders, preprocess=None)
  with warnings.catch_warnings():  # the load itself warns about strings it drops
    warnings.simplefilter("ignore")
    plan = _features.plan_for(b, spec, keys, shapes=shapes, eager=True, asked=asked, label=label,
                               what="from_tfds", user_fns=bool(decoders), peek=list)
  if plan.longest:
    return None, n, plan
  record = sum(int(np.prod(shape, dtype=np.int64)) * dtype.itemsize for shape, dtype in plan.spec.values())
  return record * n, n, plan


@_tf.quiet
def from_tfds(
    name: str,
    split: str,
    *,
    eager: bool | None = None,
    memory_budget: int | None = None,
    **kwargs,
) -> Source | Stream:
  """Loads a split eagerly when it fits in memory, else opens a stream.

  The decoded size comes from the dataset info (sliced splits such as
  ``train[:10%]`` included) and the features chosen, without reading records.
  The choice and its reason are logged (logger ``"tfds_jax"``, INFO).

  Args:
    name: TFDS name.
    split: split string.
    eager: True forces :func:`load`, False forces :func:`stream`; None chooses.
    memory_budget: bytes an eager source may take; default: 10% of the
      accelerator's memory, or 25% of available host memory on a CPU-only
      machine (see ``tfds-jax info NAME``).
    **kwargs: options of :func:`load` and :func:`stream` (those of the one
      chosen are passed on; the other's are an error only if given a value it
      cannot honour).

  Returns:
    A :class:`Source` (eager) or a :class:`Stream`.

  Raises:
    ValueError: ``eager=True`` for a split that does not fit the budget or has
      variable-shape features (checked before reading anything), a negative
      ``memory_budget``, plus the errors of :func:`load` and :func:`stream`.
    TypeError: an option neither :func:`load` nor :func:`stream` takes.

  Example:
    >>> import tfds_jax
    >>> src = tfds_jax.from_tfds("digits", "train")  # doctest: +SKIP
    >>> type(src).__name__  # doctest: +SKIP
    'Source'
  """
  _tfds.check_request(name, split, device=kwargs.get("device"),
                      beam_num_workers=kwargs.get("beam_num_workers"), data_dir=kwargs.get("data_dir"),
                      file_format=_tfds.prepare_format(kwargs.get("download_and_prepare_kwargs")))
  _check_options(kwargs)
  if memory_budget is not None and (isinstance(memory_budget, bool) or not isinstance(memory_budget, int)
                                    or memory_budget < 0):
    raise ValueError(f"Expected memory_budget to be None or a number of bytes >= 0, got"
                     f" {memory_budget!r}; pass e.g. 2 * 1024**3, or None for the default.")
  cached = _cached_choice(name, split, eager=eager, memory_budget=memory_budget, **kwargs)
  use_eager, reason = cached or choose(name, split, eager=eager, memory_budget=memory_budget, **kwargs)
  log.info("from_tfds(%r, %r): %s", name, split, reason)
  if use_eager:
    return _tfds.load(name, split, **{k: v for k, v in kwargs.items() if k in _LOAD_ONLY | _SHARED})
  return stream(name, split, **{k: v for k, v in kwargs.items() if k in _STREAM_ONLY | _SHARED})


_SHARED = frozenset({"data_dir", "as_supervised", "include_keys", "exclude_keys", "decoders", "shapes",
                     "download",
                     "local_files_only", "try_gcs", "download_and_prepare_kwargs", "beam_num_workers",
                     "device"})
_LOAD_ONLY = frozenset({"cache"})
_STREAM_ONLY = frozenset({"preprocess", "read_ahead", "num_threads", "shuffle_buffer_size", "mode"})


def _cached_choice(name: str, split: str, *, eager: bool | None, memory_budget: int | None,
                   **kwargs) -> tuple[bool, str] | None:
  """``(True, reason)`` when the split is in the decoded cache and fits: load reads it back
  without TensorFlow, so nothing needs the dataset's files; None to decide with TFDS."""
  if eager is False or not kwargs.get("cache", True) or any(
      kwargs.get(k) for k in ("preprocess", "decoders", "try_gcs")):
    return None
  if _features.cache_key(kwargs.get("shapes")) is None:  # a tokenizer without cache_key: never cached
    return None
  key = _tfds.cache_key(name, split, **{k: kwargs[k] for k in ("data_dir", "as_supervised", "include_keys",
                                                               "exclude_keys", "shapes") if k in kwargs})
  meta = _cache.peek(key)
  try:
    features = meta["features"] if meta is not None else None
    nbytes = sum(int(np.prod(f["shape"], dtype=np.int64)) * np.dtype(f["dtype"]).itemsize for f in features)
    n = int(features[0]["shape"][0])
  except (KeyError, IndexError, TypeError, ValueError):
    return None
  if memory_budget is not None:
    limit, where = int(memory_budget), "memory_budget"
  else:
    limit, where = _tfds.memory_free() if eager else _tfds.memory_budget()
  if nbytes > limit:
    return None  # choose() says why, with the dataset's own figures
  size = f"{meta['extra'].get('name', name)}[{split}] is {_tfds.human(nbytes)} decoded ({n:,} records, cached)"
  return True, f"eager{' (eager=True)' if eager else ''}: {size}, within {_tfds.human(limit)} ({where})"


def _check_options(kwargs: Mapping[str, Any]) -> None:
  unknown = sorted(set(kwargs) - _SHARED - _LOAD_ONLY - _STREAM_ONLY)
  if unknown:  # checked first: a cached load would otherwise drop them without a word
    raise TypeError(f"Expected options of load or stream, got unknown {unknown}; see"
                    " help(tfds_jax.from_tfds).")


def choose(name: str, split: str, *, eager: bool | None = None, memory_budget: int | None = None,
           **kwargs) -> tuple[bool, str]:
  """Whether :func:`from_tfds` would load eagerly, and why (one line).

  Reads only the dataset info (preparing the dataset if it must).
  """
  _check_options(kwargs)
  if eager is False:
    return False, "streaming (eager=False)"
  b = _tfds.builder(name, data_dir=kwargs.get("data_dir"), try_gcs=kwargs.get("try_gcs", False))
  _tfds.ensure_prepared(b, download=kwargs.get("download", True),
                        local_files_only=kwargs.get("local_files_only", False),
                        download_and_prepare_kwargs=kwargs.get("download_and_prepare_kwargs"),
                        beam_num_workers=kwargs.get("beam_num_workers"))
  keys, asked = _tfds.select_keys(b, as_supervised=kwargs.get("as_supervised", False),
                                  include_keys=kwargs.get("include_keys"),
                                  exclude_keys=kwargs.get("exclude_keys"),
                                  decoders=kwargs.get("decoders"))
  label = f"{_tfds.full_name(b)}[{split}]"
  if kwargs.get("preprocess") is not None:
    if eager:
      raise ValueError(f"Expected no preprocess= for eager=True (load has none), got one for {label};"
                       " use decoders= to transform features in an eager load, or eager=None.")
    return False, "streaming: preprocess= runs per record while streaming"
  nbytes, n, plan = decoded_bytes(b, split, keys, kwargs.get("decoders"), kwargs.get("shapes"), asked)
  if nbytes is None:
    longest = [u for u in plan.units if None in u.sizes]
    if eager:
      return True, f"eager (eager=True): {label} padded to its longest records"
    options = ", ".join(f"{_features.name(u.path)}: tfds_jax.pad(...)" for u in longest)
    raise ValueError(
        f"Expected a size for every feature of varying shape, so that from_tfds can tell whether"
        f" {label} fits in memory, got {', '.join(_features.name(u.path) for u in longest)} without"
        f" one; pass shapes={{{options}}} (a stream needs them too), or eager=True to load it"
        " padded to the longest record of the split.")
  if memory_budget is None:
    budget, where = _tfds.memory_budget()
  else:
    budget, where = int(memory_budget), "memory_budget"
  size = f"{label} is {_tfds.human(nbytes)} decoded ({n:,} records)"
  if eager:
    limit, limit_where = (budget, where) if memory_budget is not None else _tfds.memory_free()
    if nbytes > limit:
      raise ValueError(f"Expected {label} to fit in memory for eager=True, got {size} and"
                       f" {_tfds.human(limit)} of {limit_where}; stream it with eager=False"
                       " (or raise memory_budget).")
    return True, f"eager (eager=True): {size}"
  budget_text = f"the budget {_tfds.human(budget)} ({where})"
  if nbytes <= budget:
    return True, f"eager: {size}, within {budget_text}"
  return False, f"streaming: {size}, over {budget_text}"
