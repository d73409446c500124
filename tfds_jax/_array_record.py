"""Random access into TFDS splits stored as ArrayRecord: any records, by index.

ArrayRecord files (``tfds-jax prepare NAME --file-format array_record``) can
be read at any record without reading what comes before it. This module reads
the serialized records at given indices and decodes them in one TensorFlow
call per batch (TFDS's own per-feature decoding, run in parallel inside the
graph), returning numpy arrays in JAX's dtypes. Streams (``_stream.py``) and
eager loads of ArrayRecord-prepared data both read through it.
"""

from __future__ import annotations

import collections
import concurrent.futures
import logging
import os
import sys
import threading
from typing import Any, Callable, Mapping

import numpy as np

from tfds_jax import _cache
from tfds_jax import _features
from tfds_jax import _source
from tfds_jax import _tf

_PARALLEL_RECORDS = 32  # records decoded concurrently inside one TF call
_PREPARE_AGAIN = "prepare the dataset again (its files are damaged): `tfds-jax prepare NAME` into a fresh data_dir"
log = logging.getLogger("tfds_jax")


class RecordError(RuntimeError):
  """Records of a batch could not be read or decoded; nothing was skipped.

  The message names each failing record (its file and index in the file, and
  the error). A stream stays usable: ``next_state`` (set by ``next_batch``) is
  the state after the failing batch, so a loop can log the error and go on
  from there, or stop.

  Attributes:
    records: ``(file, index in file)`` of each failing record, where known.
    next_state: the :class:`SourceState` after the failing batch, or None.
  """

  def __init__(self, message: str, records=()):
    super().__init__(message)
    self.records = list(records)
    self.next_state = None


def record_decoder(b, keys: list[str], *, decoders: Mapping[str, Any] | None,
                   preprocess: Callable[[dict], dict] | None):
  """TFDS's decoding of one serialized record, restricted to ``keys``, and its output spec.

  Returns:
    ``(decode, spec)``: ``decode(serialized: tf.string[]) -> {name: tf.Tensor}``
    (TFDS's nested structure, after ``preprocess``), and the nested spec of its
    output (``tf.TypeSpec`` leaves), found by tracing, without reading any record.
  """
  tf, tfds = _tf.import_tf()
  from tensorflow_datasets.core import example_parser  # pylint: disable=import-outside-toplevel
  decoders = {k: v for k, v in (decoders or {}).items() if k in keys}
  partial = tfds.decode.PartialDecoding({k: True for k in keys}, decoders=decoders or None)
  features = partial.extract_features(b.info.features)
  parser = example_parser.ExampleParser(features.get_serialized_info())

  @tf.autograph.experimental.do_not_convert  # TFDS's decoding needs no AutoGraph (a user's preprocess may)
  def tfds_decode(serialized):
    return dict(features.decode_example(parser.parse_example(serialized), decoders=partial.decoders))

  def decode(serialized):
    decoded = tfds_decode(serialized)
    return decoded if preprocess is None else dict(preprocess(decoded))

  traced = tf.function(decode).get_concrete_function(tf.TensorSpec([], tf.string))
  spec = tf.nest.map_structure(tf.type_spec_from_value, traced.structured_outputs)
  return decode, spec


class Records:
  """The serialized records of a split (or a slice of one), read by index.

  Straight from the split's ArrayRecord files, one reader per file opened on
  first use, each file's records fetched with one ``read`` call; the indices
  map to files by TFDS's file instructions, exactly as ``tfds.data_source``
  maps them (which would also start a thread pool on every call: twice the
  time for a batch of small records).

  Args:
    instructions: ``info.splits[split].file_instructions``.
  """

  def __init__(self, instructions):
    self._files = [os.fspath(fi.filename) for fi in instructions]
    self._skips = [int(fi.skip) for fi in instructions]
    self._takes = [int(fi.take) for fi in instructions]
    self._starts = np.cumsum([0] + self._takes)
    self._readers: list[Any] = [None] * len(self._files)
    self._opening = threading.Lock()

  def __len__(self) -> int:
    return int(self._starts[-1])

  def locate(self, index: int) -> tuple[str, int]:
    """``(file, index in that file)`` of record ``index`` of the split."""
    f = int(np.searchsorted(self._starts, index, side="right") - 1)
    return self._files[f], int(index - self._starts[f] + self._skips[f])

  def read(self, indices) -> list[bytes]:
    """The serialized records at ``indices`` (ints in ``[0, len)``), in that order.

    Raises:
      RecordError: a file is damaged or truncated (it names the file).
    """
    indices = np.asarray(indices, np.int64).reshape(-1)
    files = np.searchsorted(self._starts, indices, side="right") - 1
    records: list[bytes] = [b""] * len(indices)
    for f in np.unique(files).tolist():
      rows = np.flatnonzero(files == f)
      positions = (indices[rows] - self._starts[f] + self._skips[f]).tolist()
      try:
        got = self._reader(f).read(positions)
      except RecordError:
        raise
      except Exception as e:  # pylint: disable=broad-except  # riegeli reports damage as RuntimeError
        raise RecordError(
            f"Expected a readable ArrayRecord file {self._files[f]}, got {type(e).__name__}: {e}"
            f" (reading its records {positions[:8]}); {_PREPARE_AGAIN}.",
            [(self._files[f], p) for p in positions]) from e
      if len(got) != len(positions):
        raise RecordError(
            f"Expected {len(positions)} records from ArrayRecord file {self._files[f]}, got"
            f" {len(got)}; {_PREPARE_AGAIN}.", [(self._files[f], p) for p in positions])
      for row, record in zip(rows.tolist(), got):
        records[row] = record
    return records

  def _reader(self, f: int):
    with self._opening:
      if self._readers[f] is None:
        from array_record.python import array_record_module  # pylint: disable=import-outside-toplevel
        try:
          reader = array_record_module.ArrayRecordReader(  # as tfds.data_source opens them
              self._files[f], options="readahead_buffer_size:0", file_reader_buffer_size=32768)
          count = reader.num_records()
        except Exception as e:  # pylint: disable=broad-except
          raise RecordError(f"Expected a readable ArrayRecord file {self._files[f]}, got"
                            f" {type(e).__name__}: {e}; {_PREPARE_AGAIN}.") from e
        need = self._skips[f] + self._takes[f]
        if count < need:  # a truncated file opens with fewer records and reads b"" beyond them
          _close(reader, self._files[f])
          raise RecordError(
              f"Expected ArrayRecord file {self._files[f]} to hold at least {need} records (from"
              f" the dataset info), got {count}: it is truncated or damaged; {_PREPARE_AGAIN}.")
        self._readers[f] = reader
      return self._readers[f]

  def close(self) -> None:
    """Closes the files opened so far; never raises (a damaged file is logged)."""
    with self._opening:
      for file, reader in zip(self._files, self._readers):
        if reader is not None:
          _close(reader, file)
      self._readers = [None] * len(self._files)


def _close(reader, file: str) -> None:
  try:
    reader.close()
  except Exception as e:  # pylint: disable=broad-except  # a damaged file fails its close too
    log.warning("closing %s failed (%s: %s); the file may be damaged", file, type(e).__name__, e)


class RandomAccessReader:
  """Decodes the records of one ArrayRecord split at any indices, with static shapes.

  Attributes:
    num_records: records in the split (slices such as ``train[:10%]`` included).
    plan: the :class:`_features.Plan` each record is read with.
    spec: feature path -> ``(shape, numpy dtype)`` of one decoded record, in
      JAX's dtypes (int64 becomes int32 when x64 is off).
    label: ``name[split]`` for messages.
  """

  def __init__(
      self,
      b,
      split: str,
      keys: list[str],
      *,
      decoders: Mapping[str, Any] | None,
      preprocess: Callable[[dict], dict] | None,
      shapes: Mapping[Any, _features.FixedShape] | None,
      eager: bool,
      asked: set[str],
      label: str,
  ):
    tf, _ = _tf.import_tf()
    self.label = label
    try:
      self._raw = Records(b.info.splits[split].file_instructions)
    except (KeyError, ValueError, AssertionError) as e:
      raise ValueError(
          f"Expected a split of {label.rsplit('[', 1)[0]!r} such as {sorted(b.info.splits.keys())}"
          f" (slices like 'train[:10%]' work too), got {split!r}; pick one of those.") from e
    self.num_records = len(self._raw)
    one, spec = record_decoder(b, keys, decoders=decoders, preprocess=preprocess)
    self._decode_one = tf.function(one, input_signature=[tf.TensorSpec([], tf.string)])
    self.plan = _features.plan_for(
        b, spec, keys, shapes=shapes, eager=eager, asked=asked, label=label,
        what="an eager load" if eager else "a stream", user_fns=bool(decoders or preprocess),
        peek=lambda: [tf.nest.map_structure(lambda t: t.numpy(), self._decode_one(r))
                      for r in self._raw.read(range(min(8, self.num_records)))])
    plan = self.plan
    fix, cut = _features.applier(plan), _features.applier(plan, pad=False)

    def one_static(serialized):
      return fix(one(serialized))

    self._one = tf.function(one_static, input_signature=[tf.TensorSpec([], tf.string)])
    out_spec = tf.nest.map_structure(tf.type_spec_from_value,
                                     self._one.get_concrete_function().structured_outputs)
    if plan.longest:  # an eager load padding to the longest record: sizes vary per batch

      padding = _features.padding(plan)

      @tf.function(input_signature=[tf.TensorSpec([None], tf.string)])
      def decode_batch(serialized):
        ds = tf.data.Dataset.from_tensor_slices(serialized).map(
            lambda r: cut(one(r)), num_parallel_calls=_PARALLEL_RECORDS,
            deterministic=True)
        return ds.padded_batch(tf.shape(serialized, out_type=tf.int64)[0], *padding).get_single_element()
    else:

      @tf.function(input_signature=[tf.TensorSpec([None], tf.string)])
      def decode_batch(serialized):
        return tf.map_fn(one_static, serialized, fn_output_signature=out_spec,
                         parallel_iterations=_PARALLEL_RECORDS)

    decode_batch.get_concrete_function()  # trace now, not in the first batch
    self._decoding = threading.Lock()
    self._decode_batch = decode_batch
    self.spec = plan.spec

  def records(self, indices: np.ndarray) -> list[bytes]:
    """Returns the serialized records at ``indices``, undecoded."""
    return self._raw.read(indices)

  def decode(self, indices: np.ndarray, records: list[bytes]) -> dict:
    """Decodes ``records`` (read at ``indices``) in one TensorFlow call, batched.

    Raises:
      RecordError: decoding failed; the message names every failing record
        (index in the split, file and index in the file) and its error.
    """
    tf, _ = _tf.import_tf()
    serialized = tf.constant(records, tf.string)
    try:
      with self._decoding:  # one batch decodes at a time, on all cores: batches finish in order
        return self._decode_batch(serialized)
    except tf.errors.OpError as e:
      names = [(self._where(int(i)), self._raw.locate(int(i))) for i in indices]
      raise blame(self._one, names, records, self.label, e) from e

  def finish(self, indices, tensors: Mapping[str, Any], truncated: dict) -> dict:
    """A decoded batch checked against the plan: feature path -> tensor (no bookkeeping).

    The records it truncated (``truncate=True``) are added to ``truncated``.

    Raises:
      ValueError: a record exceeds its fixed size (the message names it).
    """
    indices = np.asarray(indices).reshape(-1)
    return _features.flatten(_features.check(self.plan, tensors, lambda row: self._where(int(indices[row])),
                                             truncated))

  def _where(self, index: int) -> str:
    file, position = self._raw.locate(index)
    return f"record {index} ({os.path.basename(file)}, record {position})"

  def read(self, indices: np.ndarray) -> tuple[dict, dict]:
    """The decoded records at ``indices``: feature path -> numpy array in JAX's dtypes, and
    feature path -> records truncated."""
    truncated: dict = {}
    tensors = self.finish(indices, self.decode(indices, self.records(indices)), truncated)
    return {p: _source.to_jax_dtype(_features.name(p), v.numpy(), self.spec[p][1], self.label)
            for p, v in tensors.items()}, truncated

  def close(self) -> None:
    """Closes the ArrayRecord files."""
    self._raw.close()


def blame(one: Callable, names: list[tuple[str, tuple[str, int]]], records: list[bytes],
          label: str, error: Exception | None) -> RecordError:
  """The error for a batch whose decode failed: each record decoded alone to name
  the failing ones (``names``: a description and ``(file, index)`` per record)."""
  tf, _ = _tf.import_tf()
  failed = []
  for (name, where), record in zip(names, records):
    try:
      one(tf.constant(record, tf.string))
    except tf.errors.OpError as single:
      failed.append((name, where, f"{type(single).__name__}: {_tf.tf_error_text(single)}"))
  if not failed:  # only the batch as a whole fails (shapes that differ between records, say)
    why = "" if error is None else f" ({type(error).__name__}: {_tf.tf_error_text(error)})"
    return RecordError(
        f"Expected to decode a batch of {len(records)} records of {label}, got an error for the"
        f" batch{why} although each record decodes alone; make preprocess return one shape for"
        " every record.", [w for _, w in names])
  listed = "; ".join(f"{name}: {why}" for name, _, why in failed[:5])
  more = f" (and {len(failed) - 5} more)" if len(failed) > 5 else ""
  return RecordError(
      f"Expected to decode every record of the batch, got {len(failed)} of {label} that fail:"
      f" {listed}{more}; check the decoders or preprocess function for those records, or prepare"
      " the dataset again if its files are damaged.", [w for _, w, _ in failed])


def damaged(b, split: str, label: str, error: Exception, context: str) -> RecordError:
  """The error for TFRecord files of ``b[split]`` that TensorFlow could not read,
  naming the file(s) the damage can be in (TFRecord gives a byte offset only)."""
  import re  # pylint: disable=import-outside-toplevel
  text = _tf.tf_error_text(error)
  files = [os.fspath(fi.filename) for fi in b.info.splits[split].file_instructions]
  at = re.search(r"corrupted record at (\d+)", text)
  if at:  # only the files that long can hold it
    files = [f for f in files if os.path.exists(f) and os.path.getsize(f) > int(at.group(1))] or files
  where = files[0] if len(files) == 1 else f"one of {files[:5]}" + (" ..." if len(files) > 5 else "")
  return RecordError(
      f"Expected readable TFRecord files of {label}, got {type(error).__name__}: {text} in {where}"
      f" ({context}); {_PREPARE_AGAIN}.", [(f, None) for f in files])


def read_all(reader: RandomAccessReader, *, num_threads: int = 2,
             chunk_bytes: int = 4 << 20) -> tuple[dict, dict]:
  """Reads every record of ``reader``'s split, in order, into aligned numpy buffers.

  At most ``2 * num_threads`` chunks are decoded ahead of the copy, so memory
  beyond the result stays bounded (except when a size is the longest record:
  then the chunks are kept and joined at the end).

  Returns:
    ``(arrays, truncated)``: feature path -> array, and path -> records truncated.
  """
  n = reader.num_records
  record_bytes = sum(int(np.prod([d or 1 for d in s], dtype=np.int64)) * d.itemsize
                     for s, d in reader.spec.values())
  chunk = int(min(n, max(1, chunk_bytes // max(record_bytes, 1))))
  longest = reader.plan.longest
  out = {} if longest else {p: _cache.aligned_empty((n, *shape), dtype)
                            for p, (shape, dtype) in reader.spec.items()}
  chunks: list[dict] = []
  truncated: dict = {}
  from tqdm.auto import tqdm  # pylint: disable=import-outside-toplevel
  with concurrent.futures.ThreadPoolExecutor(num_threads) as pool, tqdm(
      total=n, desc=f"loading {reader.label}", unit=" records", unit_scale=True, delay=1.0,
      file=sys.stderr, leave=False) as bar:
    pending: collections.deque = collections.deque()

    def copy_oldest():
      start, future = pending.popleft()
      part, cut = future.result()
      for p, count in cut.items():
        truncated[p] = truncated.get(p, 0) + count
      if longest:
        chunks.append(part)
      else:
        for p, v in part.items():
          out[p][start:start + len(v)] = v
      bar.update(min(chunk, n - start))

    for start in range(0, n, chunk):
      pending.append((start, pool.submit(reader.read, np.arange(start, min(start + chunk, n)))))
      if len(pending) > 2 * num_threads:
        copy_oldest()
    while pending:
      copy_oldest()
  if longest:
    out = _features.longest_padding(reader.plan, chunks, n, _cache.aligned_empty)
  return out, truncated
