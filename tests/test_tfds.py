"""load(): faithful to TFDS, every option, clear errors, and the decoded-array cache."""

import logging
import os
import subprocess
import sys

import jax
import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds

import tfds_builders
import tfds_jax
from tfds_jax import _cache, _tfds


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory):
  root = tmp_path_factory.mktemp("tfds")
  for cls in (tfds_builders.ToyImages, tfds_builders.ToyRagged, tfds_builders.ToyBigInts):
    cls(data_dir=root).download_and_prepare()
  return root


@pytest.fixture(autouse=True)
def cache_dir(tmp_path, monkeypatch):
  monkeypatch.setenv("TFDS_JAX_CACHE_DIR", str(tmp_path / "cache"))
  return tmp_path / "cache"


def _as_numpy(data_dir, split, name="toy_images"):
  b = tfds.builder(name, data_dir=data_dir)
  return tfds.as_numpy(b.as_dataset(split=split, batch_size=-1, shuffle_files=False))


def _count_reads(monkeypatch):
  calls = []
  real = _tfds._read_all
  monkeypatch.setattr(_tfds, "_read_all", lambda *a, **k: calls.append(a[-1]) or real(*a, **k))
  return calls


@pytest.mark.parametrize("split", ["train", "test", "train[:25%]", "train[5:15]"])
def test_arrays_equal_as_numpy(data_dir, split):
  with pytest.warns(UserWarning, match=r"Dropping string feature\(s\) 'id' of toy_images"):
    source = tfds_jax.load("toy_images", split, data_dir=data_dir)
  ref = _as_numpy(data_dir, split)
  del ref["id"]
  assert jax.tree.structure(source.data) == jax.tree.structure(ref)  # TFDS's nesting: meta/{a, b}
  jax.tree.map(np.testing.assert_array_equal, source.data, ref)
  assert source.num_records == len(ref["label"])
  assert (source.name, source.split) == ("toy_images", split)


def test_info_and_element_spec(data_dir):
  source = tfds_jax.load("toy_images", "train", data_dir=data_dir, exclude_keys=["id"])
  info = tfds_jax.info(source)
  assert info.supervised_keys == ("image", "label")
  assert info.features["label"].names == ["a", "b", "c"]
  assert info.splits["train"].num_examples == tfds_builders.TRAIN
  assert "Toy images" in info.description
  assert tfds_jax.element_spec(source)["image"] == jax.ShapeDtypeStruct((8, 8, 1), np.uint8)
  with pytest.raises(ValueError, match="Expected a source made by tfds_jax.load"):
    tfds_jax.info(tfds_jax.from_arrays({"x": np.arange(2)}))


def test_include_exclude_and_supervised(data_dir):
  inc = tfds_jax.load("toy_images", "train", data_dir=data_dir, include_keys={"image"})
  assert set(inc.data) == {"image"}
  exc = tfds_jax.load("toy_images", "train", data_dir=data_dir, exclude_keys={"id", "meta"})
  assert set(exc.data) == {"image", "label", "score"}
  sup = tfds_jax.load("toy_images", "test", data_dir=data_dir, as_supervised=True)
  assert set(sup.data) == {"image", "label"}
  ref = _as_numpy(data_dir, "test")
  np.testing.assert_array_equal(np.asarray(sup.data["label"]), ref["label"])
  sup_inc = tfds_jax.load("toy_images", "test", data_dir=data_dir, as_supervised=True, include_keys=["label"])
  assert set(sup_inc.data) == {"label"}


def test_left_out_features_are_never_decoded(data_dir, monkeypatch):
  decoded = []
  real = tfds.features.Image.decode_example
  monkeypatch.setattr(tfds.features.Image, "decode_example",
                      lambda self, *a, **k: decoded.append(1) or real(self, *a, **k))
  tfds_jax.load("toy_images", "train", data_dir=data_dir, include_keys=["label"], cache=False)
  assert not decoded
  tfds_jax.load("toy_images", "train", data_dir=data_dir, include_keys=["image"], cache=False)
  assert decoded


@pytest.mark.parametrize("kwargs, match", [
    (dict(include_keys={"image"}, exclude_keys={"id"}), r"Expected at most one of include_keys and exclude_keys, got both \(\['image'\] and \['id'\]\)"),
    (dict(include_keys={"imgs"}), r"Expected include_keys among the features of 'toy_images', \['id', 'image', 'label', 'meta', 'score'\]; got unknown \['imgs'\]"),
    (dict(exclude_keys=["nope"]), r"got unknown \['nope'\]"),
    (dict(as_supervised=True, include_keys={"id"}), r"Expected include_keys among the features of 'toy_images', \['image', 'label'\]"),
    (dict(include_keys={"id", "label"}), r"Expected a static shape for every feature in an eager load of toy_images\[train\].* got 'id' \(text, asked for by name: JAX arrays hold numbers only\); pass shapes=\{'id': tfds_jax.encode_text\(9\)\}"),
])
def test_bad_keys(data_dir, kwargs, match):
  with pytest.raises(ValueError, match=match):
    tfds_jax.load("toy_images", "train", data_dir=data_dir, **kwargs)


def test_unknown_dataset_and_split(data_dir):
  with pytest.raises(ValueError, match=r"got 'toy_imagez', which TFDS does not know; did you mean toy_images"):
    tfds_jax.load("toy_imagez", "train", data_dir=data_dir)
  with pytest.raises(ValueError, match=r"Expected a split of 'toy_images' such as \['test', 'train'\].*got 'validation'"):
    tfds_jax.load("toy_images", "validation", data_dir=data_dir)


def test_variable_shape_feature(data_dir):
  with pytest.raises(ValueError, match=r"eager load of toy_ragged\[train\] \(an eager load pads only what varies in one dimension, to the longest record; other sizes must be given\), got 'image' \(shape \(None, None, 1\), shapes seen \[\(4, 5, 1\), \(4, 6, 1\), \(5, 5, 1\)") as e:
    tfds_jax.load("toy_ragged", "train", data_dir=data_dir)
  assert "shapes={'image': tfds_jax.resize(6, 6)}" in str(e.value) and "exclude_keys=['image']" in str(e.value)
  labels = tfds_jax.load("toy_ragged", "train", data_dir=data_dir, exclude_keys=["image"])
  assert set(labels.data) == {"label"}

  @tfds.decode.make_decoder(output_dtype=tf.uint8)
  def resize(serialized, feature):
    del feature
    image = tf.io.decode_png(serialized, channels=1)
    return tf.cast(tf.image.resize(image, (4, 4), method="nearest"), tf.uint8)

  resized = tfds_jax.load("toy_ragged", "train", data_dir=data_dir, decoders={"image": resize()})
  assert resized.data["image"].shape == (10, 4, 4, 1)
  images, labels = np.asarray(resized.data["image"]), np.asarray(resized.data["label"])
  fills = images[:, 0, 0, 0]
  np.testing.assert_array_equal(images, np.broadcast_to(fills[:, None, None, None], images.shape))
  np.testing.assert_array_equal(np.sort(fills), np.arange(10))  # record i is filled with i
  np.testing.assert_array_equal(fills % 2, labels)


def test_integer_overflow_is_an_error(data_dir):
  with pytest.raises(ValueError, match=r"Expected feature 'big' of toy_big_ints\[train\] to fit int32.*got values in \[1099511627776, 1099511627779\]"):
    tfds_jax.load("toy_big_ints", "train", data_dir=data_dir)


def test_nothing_prepared(tmp_path):
  for kwargs in (dict(local_files_only=True), dict(download=False)):
    with pytest.raises(FileNotFoundError, match=r"Expected prepared files for 'toy_images' \(version 1.0.0\) in .*found none.*tfds-jax prepare toy_images") as e:
      tfds_jax.load("toy_images", "train", data_dir=tmp_path / "empty", **kwargs)
    assert str(tmp_path / "empty") in str(e.value)


def test_prepares_when_missing(tmp_path):
  source = tfds_jax.load("toy_images", "test", data_dir=tmp_path / "fresh", exclude_keys=["id"])
  assert source.num_records == tfds_builders.TEST


def test_cache_reuse_without_tensorflow(data_dir, cache_dir, monkeypatch):
  reads = _count_reads(monkeypatch)
  first = tfds_jax.load("toy_images", "train", data_dir=data_dir, exclude_keys=["id"])
  _cache.flush()  # the entry is written on a background thread
  assert len(reads) == 1 and any(cache_dir.rglob("meta.json"))
  monkeypatch.setattr(_tfds, "builder", lambda *a, **k: pytest.fail("a cache hit must not touch TFDS"))
  second = tfds_jax.load("toy_images", "train", data_dir=data_dir, exclude_keys=["id"])
  assert len(reads) == 1
  jax.tree.map(np.testing.assert_array_equal, first.data, second.data)
  assert second.info == first.info  # equal static metadata: no retrace
  assert jax.tree_util.tree_structure(first) == jax.tree_util.tree_structure(second)


def test_cache_hit_in_fresh_process_imports_no_tensorflow(data_dir, cache_dir):
  tfds_jax.load("toy_images", "train", data_dir=data_dir, exclude_keys=["id"])
  _cache.flush()
  code = (f"import sys, tfds_jax; s = tfds_jax.load('toy_images', 'train', data_dir={str(data_dir)!r},"
          " exclude_keys=['id']); assert s.num_records == 40; print('tensorflow' in sys.modules)")
  out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       env={**os.environ, "JAX_PLATFORMS": "cpu"}, check=True)
  assert out.stdout.strip() == "False"


def test_cache_is_keyed_by_keys_and_mode(data_dir, monkeypatch):
  reads = _count_reads(monkeypatch)
  a = tfds_jax.load("toy_images", "train", data_dir=data_dir, include_keys=["label"])
  b = tfds_jax.load("toy_images", "train", data_dir=data_dir, as_supervised=True)
  c = tfds_jax.load("toy_images", "train[:50%]", data_dir=data_dir, as_supervised=True)
  assert len(reads) == 3
  assert set(a.data) == {"label"} and set(b.data) == {"image", "label"} and c.num_records == 20


def test_failed_cache_write_is_logged_not_raised(data_dir, cache_dir, monkeypatch, caplog):
  monkeypatch.setattr(_cache, "write", lambda *a, **k: (_ for _ in ()).throw(OSError("disk full")))
  with caplog.at_level(logging.WARNING, logger="tfds_jax"):
    source = tfds_jax.load("toy_images", "train", data_dir=data_dir, as_supervised=True)
    _cache.flush()
  assert source.num_records == tfds_builders.TRAIN and "could not write the cache" in caplog.text


def test_cache_off(data_dir, cache_dir, monkeypatch):
  reads = _count_reads(monkeypatch)
  for _ in range(2):
    tfds_jax.load("toy_images", "train", data_dir=data_dir, exclude_keys=["id"], cache=False)
  assert len(reads) == 2 and not cache_dir.exists()


def test_stale_cache_is_rebuilt(data_dir, monkeypatch, caplog):
  reads = _count_reads(monkeypatch)
  tfds_jax.load("toy_images", "train", data_dir=data_dir, exclude_keys=["id"])
  shard = next(p for p in (data_dir / "toy_images").rglob("*.tfrecord*"))
  st = shard.stat()
  os.utime(shard, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))  # as if prepared again
  with caplog.at_level(logging.WARNING, logger="tfds_jax"):
    again = tfds_jax.load("toy_images", "train", data_dir=data_dir, exclude_keys=["id"])
  assert len(reads) == 2 and "is stale" in caplog.text
  np.testing.assert_array_equal(np.asarray(again.data["label"]), _as_numpy(data_dir, "train")["label"])


@pytest.mark.parametrize("damage", ["truncate", "overwrite", "meta"])
def test_damaged_cache_is_rebuilt(data_dir, cache_dir, monkeypatch, caplog, damage):
  reads = _count_reads(monkeypatch)
  tfds_jax.load("toy_images", "train", data_dir=data_dir, include_keys=["image"])
  _cache.flush()
  entry = next(cache_dir.rglob("meta.json")).parent
  npy = entry / "0.npy"
  if damage == "truncate":
    npy.write_bytes(npy.read_bytes()[:-100])
  elif damage == "overwrite":
    raw = bytearray(npy.read_bytes())
    raw[-50] ^= 0xFF
    npy.write_bytes(bytes(raw))
  else:
    (entry / "meta.json").write_text("{not json")
  with caplog.at_level(logging.WARNING, logger="tfds_jax"):
    again = tfds_jax.load("toy_images", "train", data_dir=data_dir, include_keys=["image"])
  assert len(reads) == 2 and "is damaged" in caplog.text
  np.testing.assert_array_equal(np.asarray(again.data["image"]), _as_numpy(data_dir, "train")["image"])


def _damage_cases():
  # Every part of an entry: the .npy header, the first and last data bytes, a middle
  # run (64 inverted bytes, as in the fault sweep), a truncated or extended file, and
  # meta.json (broken JSON, or valid JSON saying something else).
  # "header_text": 64 inverted bytes in the header's dict, which numpy's parser would choke on
  # (tokenize.TokenError, not a ValueError) if it ever saw them.
  return ["header", "header_text", "first", "last", "middle", "truncate", "extend", "meta_json",
          "meta_value"]


@pytest.mark.parametrize("damage", _damage_cases())
def test_any_damage_to_a_cache_entry_is_detected(data_dir, cache_dir, monkeypatch, caplog, damage):
  reads = _count_reads(monkeypatch)
  monkeypatch.setattr(_cache, "_BLOCK", 1000)  # several checksum blocks in a small file
  tfds_jax.load("toy_images", "train", data_dir=data_dir, include_keys=["image"])
  _cache.flush()
  entry = next(cache_dir.rglob("meta.json")).parent
  npy, meta = entry / "0.npy", entry / "meta.json"
  raw = bytearray(npy.read_bytes())
  data_start = len(raw) - tfds_builders.TRAIN * 64
  if damage == "header":
    raw[data_start - 2] ^= 0x01  # a padding byte of the header
  elif damage == "header_text":
    for i in range(10, 74):  # the dict after the magic and the header length
      raw[i] ^= 0xFF
  elif damage == "first":
    raw[data_start] ^= 0x80
  elif damage == "last":
    raw[-1] ^= 0x01
  elif damage == "middle":
    for i in range(data_start + 1000, data_start + 1064):
      raw[i] ^= 0xFF
  elif damage == "truncate":
    raw = raw[:-100]
  elif damage == "extend":
    raw += b"\0" * 8
  if damage.startswith("meta"):
    text = meta.read_text()
    meta.write_text("{not json" if damage == "meta_json" else text.replace('"info_dir": "', '"info_dir": "/elsewhere'))
  else:
    npy.write_bytes(bytes(raw))
  with caplog.at_level(logging.WARNING, logger="tfds_jax"):
    again = tfds_jax.load("toy_images", "train", data_dir=data_dir, include_keys=["image"])
  assert len(reads) == 2 and "is damaged" in caplog.text, caplog.text
  np.testing.assert_array_equal(np.asarray(again.data["image"]), _as_numpy(data_dir, "train")["image"])
  assert tfds_jax.info(again).name == "toy_images"


@pytest.mark.parametrize("offset", [100_000, 5_000_000, 12_000_000 - 64])
def test_64_inverted_bytes_anywhere_in_a_large_entry_are_detected(cache_dir, tmp_path, offset):
  # 12 MB: the old check sampled sixteen 64 KiB blocks and missed damage between them.
  arrays = {"x": np.arange(3_000_000, dtype=np.int32)}
  key = {"name": "big", "offset": offset}
  _cache.write(key, arrays, tmp_path, _cache.tree_fingerprint(tmp_path), {})
  npy = _cache.entry_dir(key) / "0.npy"
  raw = bytearray(npy.read_bytes())
  for i in range(offset, offset + 64):
    raw[i] ^= 0xFF
  npy.write_bytes(bytes(raw))
  assert _cache.read(key) is None and not npy.exists()  # detected, logged, removed


_KILLED_WRITER = """
import os, sys, time, numpy as np
from tfds_jax import _cache
real = np.lib.format.write_array
def stall(f, array, **kwargs):  # write half the file, then hang until killed
  f.write(b"x" * 4096); f.flush()
  open(sys.argv[1], "w").close()
  time.sleep(600)
np.lib.format.write_array = stall
_cache.write({"name": "toy_images", "k": 1}, {"x": np.zeros(100000)}, sys.argv[2], "", {})
"""


def test_writes_killed_midway_are_cleaned_up_by_the_next_load(data_dir, cache_dir, tmp_path, caplog):
  started = tmp_path / "started"
  env = {**os.environ, "TFDS_JAX_CACHE_DIR": str(cache_dir), "JAX_PLATFORMS": "cpu"}
  child = subprocess.Popen([sys.executable, "-c", _KILLED_WRITER, str(started), str(data_dir)], env=env)
  try:
    for _ in range(600):
      if started.exists() or child.poll() is not None:
        break
      import time  # pylint: disable=import-outside-toplevel
      time.sleep(0.1)
    assert started.exists(), "the writer never started"
    orphans = list((cache_dir / "toy_images").glob(".*.tmp-*"))
    assert len(orphans) == 1 and any(orphans[0].iterdir())
  finally:
    child.kill()  # SIGKILL: no cleanup runs in the child
    child.wait()
  with caplog.at_level(logging.INFO, logger="tfds_jax"):
    tfds_jax.load("toy_images", "train", data_dir=data_dir, include_keys=["label"])
  _cache.flush()
  assert not list((cache_dir / "toy_images").glob(".*.tmp-*")) and "stopped while writing it" in caplog.text
  alive = cache_dir / "toy_images" / f".abc.tmp-{_cache._HOST}-{os.getpid()}"  # a live writer: kept
  other = cache_dir / "toy_images" / ".abc.tmp-otherhost-1"  # another machine's: kept
  alive.mkdir(), other.mkdir()
  tfds_jax.load("toy_images", "train", data_dir=data_dir, include_keys=["label"])
  assert alive.exists() and other.exists()


@pytest.mark.parametrize("call, error, match", [
    (lambda d: tfds_jax.load(123, "train", data_dir=d), TypeError,
     r"Expected a TFDS dataset name \(a str such as 'mnist' or 'cifar10:3.0.2'\), got 123 \(int\)"),
    (lambda d: tfds_jax.load(None, "train", data_dir=d), TypeError, r"got None \(NoneType\)"),
    (lambda d: tfds_jax.load("toy_images", ["train", "test"], data_dir=d), TypeError,
     r"Expected one split string such as 'train', 'train\[:10%\]' or 'train\+test', got \['train', 'test'\] \(list\)"),
    (lambda d: tfds_jax.load("toy_images", "train", data_dir=d, device="cpu"), TypeError,
     "Expected device to be None, a jax.Device or a jax.sharding.Sharding, got str 'cpu'"),
    (lambda d: tfds_jax.load("toy_images:9.9.9", "train", data_dir=d), ValueError,
     r"Expected a version and config of 'toy_images' that TFDS can build, got 'toy_images:9.9.9': .*only: 1.0.0"),
    (lambda d: tfds_jax.load("digits:9.9.9", "train", data_dir=d), ValueError, r"got 'digits:9.9.9'"),
    (lambda d: tfds_jax.prepare("toy_images", data_dir=d, file_format="parquet2"), ValueError,
     r"Expected file_format to be one of \['tfrecord', 'array_record'\] .* got 'parquet2'"),
    (lambda d: tfds_jax.load("toy_images", "train", data_dir=d, beam_num_workers=0), ValueError,
     "Expected beam_num_workers to be None or a positive int, got 0"),
    (lambda d: tfds_jax.load("toy_images", "train", data_dir=d, beam_num_workers=-1), ValueError,
     "got -1"),
    (lambda d: tfds_jax.prepare("toy_images", data_dir=d, beam_num_workers=0), ValueError, "got 0"),
    (lambda d: tfds_jax.stream("toy_images", "train", data_dir=d, beam_num_workers=-1), ValueError, "got -1"),
    (lambda d: tfds_jax.from_tfds("toy_images", ["train"], data_dir=d), TypeError, "one split string"),
    # was os.fspath's "expected str, bytes or os.PathLike object, not int"
    (lambda d: tfds_jax.load("digits", "train", data_dir=123), TypeError,
     r"Expected data_dir to be None or a path \(a str or os.PathLike\), got int 123"),
    (lambda d: tfds_jax.stream("toy_images", "train", data_dir=123), TypeError, "Expected data_dir"),
    (lambda d: tfds_jax.prepare("toy_images", data_dir=123), TypeError, "Expected data_dir"),
    (lambda d: tfds_jax.from_tfds("toy_images", "train", data_dir=123), TypeError, "Expected data_dir"),
    # an empty slice: was numpy's "negative dimensions are not allowed"
    (lambda d: tfds_jax.load("toy_images", "train[5:2]", data_dir=d, cache=False), ValueError,
     r"Expected a split of 'toy_images' with at least one record, got 'train\[5:2\]', which selects none"),
    (lambda d: tfds_jax.stream("toy_images", "train[40:]", data_dir=d), ValueError, "with at least one record"),
    # include_keys=[] loaded every feature
    (lambda d: tfds_jax.load("toy_images", "train", data_dir=d, include_keys=[], cache=False), ValueError,
     r"Expected at least one feature of 'toy_images' to load, got none after include_keys/exclude_keys"),
    (lambda d: tfds_jax.load("toy_images", "train", data_dir=d, include_keys=[]), ValueError,
     "Expected at least one feature"),  # before the cache (a cached entry cannot answer it)
    (lambda d: tfds_jax.stream("toy_images", "train", data_dir=d, include_keys=[]), ValueError,
     "Expected at least one feature"),
    # TFDS prepared parquet files, which were then read as TFRecord and called damaged
    (lambda d: tfds_jax.load("toy_images", "train", data_dir=d / "fresh",
                             download_and_prepare_kwargs={"file_format": "parquet"}), ValueError,
     r"Expected file_format to be one of \['tfrecord', 'array_record'\] .* got 'parquet'"),
    (lambda d: tfds_jax.prepare("toy_images", data_dir=d / "fresh",
                                download_and_prepare_kwargs={"file_format": "parquet"}), ValueError,
     "got 'parquet'"),
])
def test_bad_arguments_are_clear_errors_before_any_work(data_dir, call, error, match):
  with pytest.raises(error, match=match):
    call(data_dir)  # the dataset is prepared: beam_num_workers is checked all the same


def test_a_dataset_prepared_in_a_format_tfds_jax_does_not_read_is_named_not_called_damaged(tmp_path):
  tfds_builders.ToyImages(data_dir=tmp_path).download_and_prepare(file_format="parquet")
  match = (r"Expected 'toy_images' prepared as one of \['tfrecord', 'array_record'\] .* got parquet files"
           r" in .*; prepare it again into another data_dir with `tfds-jax prepare toy_images --file-format array_record")
  for call in (lambda: tfds_jax.load("toy_images", "train", data_dir=tmp_path, cache=False),
               lambda: tfds_jax.stream("toy_images", "train", data_dir=tmp_path)):
    with pytest.raises(ValueError, match=match):
      call()


def test_a_users_own_digits_is_not_shadowed_by_the_embedded_one(tmp_path):
  with tfds.core.registered.skip_registration():
    class Digits(tfds.core.GeneratorBasedBuilder):  # pylint: disable=unused-variable
      """The user's own dataset that happens to be called digits."""
      VERSION = tfds.core.Version("2.0.0")

      def _info(self):
        return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({
            "value": tfds.features.Scalar(dtype=np.float32)}))

      def _split_generators(self, dl_manager):
        return {"train": self._generate_examples()}

      def _generate_examples(self):
        for i in range(6):
          yield i, {"value": np.float32(i / 2)}

    Digits(data_dir=tmp_path).download_and_prepare()
  source = tfds_jax.load("digits", "train", data_dir=tmp_path, cache=False)
  assert set(source.data) == {"value"} and source.num_records == 6
  np.testing.assert_array_equal(np.sort(np.asarray(source.data["value"])), np.arange(6) / 2)
  assert tfds_jax.load("digits:2.0.0", "train", data_dir=tmp_path, cache=False).num_records == 6


def _corrupt_middle(path, n=64):
  raw = bytearray(path.read_bytes())
  for i in range(len(raw) // 2, len(raw) // 2 + n):
    raw[i] ^= 0xFF
  path.write_bytes(bytes(raw))


def test_damaged_prepared_files_are_named(tmp_path):
  tfds_builders.ToyImages(data_dir=tmp_path).download_and_prepare()
  shard = next((tmp_path / "toy_images").rglob("*train.tfrecord*"))
  _corrupt_middle(shard)
  with pytest.raises(tfds_jax.RecordError, match=f"Expected readable TFRecord files of toy_images\\[train\\], got DataLossError: .*corrupted record at .* in {shard}"):
    tfds_jax.load("toy_images", "train", data_dir=tmp_path, exclude_keys=["id"], cache=False)


def test_device_placement(data_dir):
  device = jax.devices()[-1]
  source = tfds_jax.load("toy_images", "train", data_dir=data_dir, as_supervised=True, device=device)
  assert source.data["image"].devices() == {device}


def test_store_as_tfds_dataset(tmp_path):
  rng = np.random.default_rng(0)
  x, y = rng.normal(size=(9, 3)).astype(np.float32), np.arange(9) % 4
  splits = {"train": tf.data.Dataset.from_tensor_slices({"x": x, "y": y})}
  features = tfds.features.FeaturesDict({
      "x": tfds.features.Tensor(shape=(3,), dtype=np.float32),
      "y": tfds.features.ClassLabel(num_classes=4)})
  tfds.dataset_builders.store_as_tfds_dataset(
      name="adhoc_vectors", version="1.0.0", features=features, split_datasets=splits, data_dir=tmp_path)
  source = tfds_jax.load("adhoc_vectors", "train", data_dir=tmp_path)
  order = np.argsort(np.asarray(source.data["x"])[:, 0])  # TFDS may reorder records
  np.testing.assert_array_equal(np.asarray(source.data["x"])[order], x[np.argsort(x[:, 0])])
  np.testing.assert_array_equal(np.asarray(source.data["y"])[order], y[np.argsort(x[:, 0])])


def test_mock_data_mnist():
  with tfds.testing.mock_data(num_examples=20):
    source = tfds_jax.load("mnist", "train", cache=False)
  assert source.num_records == 20
  assert tfds_jax.element_spec(source)["image"] == jax.ShapeDtypeStruct((28, 28, 1), np.uint8)


def test_tensorflow_is_kept_off_accelerators(monkeypatch):
  calls = []
  monkeypatch.setattr(tf.config, "list_physical_devices", lambda kind=None: [f"/physical_device:{kind}:0"] if kind == "GPU" else [])
  monkeypatch.setattr(tf.config, "set_visible_devices", lambda devices, kind=None: calls.append((list(devices), kind)))
  _tfds.import_tf()
  assert calls == [([], "GPU")]


def test_shuffled_iteration_over_a_loaded_split(data_dir):
  source = tfds_jax.load("toy_images", "train", data_dir=data_dir, as_supervised=True)
  state = tfds_jax.init(source, seed=1, shuffle=True)
  seen = []
  for _ in range(4):
    batch, state = tfds_jax.next_batch(source, state, 10)
    seen.append(np.asarray(batch["label"]))
  assert int(state.epoch) == 1 and int(state.index) == 0
  np.testing.assert_array_equal(np.sort(np.concatenate(seen)), np.sort(_as_numpy(data_dir, "train")["label"]))


_TF_FREE = """
import sys, tfds_jax
from tfds_jax import _tfds
D = sys.argv[1]
source = tfds_jax.load("digits", "train", data_dir=D)
assert tfds_jax.info(source).features["label"].num_classes == 10
assert type(tfds_jax.from_tfds("digits", "train", data_dir=D)).__name__ == "Source"
assert "train: 1,437 records" in _tfds.describe("digits", data_dir=D)
print("imported:", sorted(m for m in ("tensorflow", "keras") if m in sys.modules))
"""


def test_cached_loads_info_from_tfds_and_describe_never_import_tensorflow(tmp_path, cache_dir):
  tfds_jax.load("digits", "train", data_dir=tmp_path / "data")  # prepares and caches
  _cache.flush()
  out = subprocess.run([sys.executable, "-c", _TF_FREE, str(tmp_path / "data")], capture_output=True, text=True,
                       env={**os.environ, "JAX_PLATFORMS": "cpu"})
  assert out.returncode == 0, out.stderr
  assert "imported: []" in out.stdout, out.stdout + out.stderr


def test_a_load_without_tensorflow_fails_at_once_saying_what_to_install(tmp_path):
  code = ("import sys, importlib.machinery as m\n"
          "class NoTF(m.PathFinder):  # as if TensorFlow were not installed\n"
          "  @classmethod\n"
          "  def find_spec(cls, name, path=None, target=None):\n"
          "    return None if name.split('.')[0] == 'tensorflow' else super().find_spec(name, path, target)\n"
          "sys.meta_path[:] = [NoTF if f is m.PathFinder else f for f in sys.meta_path]\n"
          "import tfds_jax\n"
          f"tfds_jax.load('digits', 'train', data_dir={str(tmp_path)!r}, cache=False)")
  out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       env={**os.environ, "JAX_PLATFORMS": "cpu"})
  assert out.returncode == 1
  assert "ImportError: Expected TensorFlow to read TFDS files, got none installed; install one:" \
         " `pip install 'tfds_jax[tf]'`" in out.stderr, out.stderr
  assert not (tmp_path / "digits" / "1.0.0").exists()  # failed before preparing anything


def test_an_unreachable_download_fails_at_once(tmp_path):
  # TFDS alone retries the refused connection 10 times with backoff (minutes) and then
  # raises requests' error; this one comes from the check before the first attempt.
  with pytest.raises(ConnectionError, match=r"Expected network access to download 'toy_download'"
                     r" \(http://127.0.0.1:9/toy.bin\), got none: connecting to 127.0.0.1:9 failed"):
    tfds_jax.load("toy_download", "train", data_dir=tmp_path)
