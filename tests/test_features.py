"""Static shapes for real TFDS features: padded Sequences, resized images, audio, text, names.

Every dataset here mirrors a real TFDS builder's features (tests/tfds_builders). Each reader
(eager TFRecord and ArrayRecord, random-access and tf.data streams, from_tfds) must give exactly
TFDS's records after the same pad / resize / crop / encode, checked record by record against
`tfds.as_numpy`, with exact lengths and original shapes.
"""

import logging

import jax
import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds
from hypothesis import given, settings
from hypothesis import strategies as st

import tfds_builders
import tfds_jax
from tfds_jax import _tfds

BUILDERS = (tfds_builders.ToyDetection, tfds_builders.ToyPets, tfds_builders.ToyAudio,
            tfds_builders.ToyText, tfds_builders.ToyNested, tfds_builders.ToyGlue)


@pytest.fixture(scope="module")
def dirs(tmp_path_factory):
  out = {}
  for fmt in ("tfrecord", "array_record"):
    out[fmt] = tmp_path_factory.mktemp(fmt)
    for cls in BUILDERS:
      cls(data_dir=out[fmt]).download_and_prepare(file_format=fmt)
  return out


@pytest.fixture(autouse=True)
def cache_dir(tmp_path, monkeypatch):
  monkeypatch.setenv("TFDS_JAX_CACHE_DIR", str(tmp_path / "cache"))
  return tmp_path / "cache"


def _records(d, name, split):
  """TFDS's own records, in the order a load reads them."""
  b = tfds.builder(name, data_dir=d)
  return list(tfds.as_numpy(b.as_dataset(split=split, shuffle_files=False)))


# --- The oracle: numpy (and TF's own resize) applied to tfds.as_numpy's records -----------------

def _pad(x, size, value=0):
  x = np.asarray(x)[:size]
  widths = [(0, size - len(x))] + [(0, 0)] * (x.ndim - 1)
  return np.pad(x, widths, constant_values=value), min(len(np.asarray(x)), size)


def _resize(image, h, w, method="bilinear"):
  out = tf.image.resize(image, (h, w), method=method)
  return tf.cast(tf.clip_by_value(tf.round(out), 0, 255), tf.uint8).numpy()


def _detection(r, *, objects=5, labels=3, filename=16):
  out = {"image": _resize(r["image"], 16, 20), "image_shape": np.array(r["image"].shape, np.int32),
         "image/id": r["image/id"].astype(np.int32), "objects": {}}
  for k, v in r["objects"].items():
    out["objects"][k], out["objects_length"] = _pad(v, objects)
  out["objects"] = {k: v.astype(np.int32) if v.dtype == np.int64 else v for k, v in out["objects"].items()}
  out["labels"], out["labels_length"] = _pad(r["labels"].astype(np.int32), labels)
  out["image/filename"], out["image/filename_length"] = _pad(np.frombuffer(r["image/filename"], np.uint8), filename)
  return out


def _pets(r):
  return {"image": tf.image.resize_with_crop_or_pad(r["image"], 12, 12).numpy(),
          "image_shape": np.array(r["image"].shape, np.int32),
          "segmentation_mask": _resize(r["segmentation_mask"], 8, 8, "nearest"),
          "segmentation_mask_shape": np.array(r["segmentation_mask"].shape, np.int32),
          "label": np.int32(r["label"]), "species": np.int32(r["species"]), "head_bbox": r["head_bbox"],
          "file_name": _pad([ord(c) for c in r["file_name"].decode()], 10)[0].astype(np.int32),
          "file_name_length": np.int32(len(r["file_name"].decode()))}


def _audio(r):
  audio, length = _pad(r["audio"], 240)
  return {"audio": audio, "audio_length": np.int32(length), "label": np.int32(r["label"])}


def _text(r):
  ids, length = _pad(np.frombuffer(r["text"], np.uint8), 80)
  return {"text": ids, "text_length": np.int32(length), "label": np.int32(r["label"])}


def _nested(r):
  tokens, n = _pad(r["meta"]["tokens"], 4)
  points, m = _pad(r["meta"]["points"], 8)
  return {"label": np.int32(r["label"]), "meta": {"tokens": tokens, "tokens_length": np.int32(n),
                                                  "points": points, "points_length": np.int32(m),
                                                  "scale": r["meta"]["scale"]}}


CASES = {
    "toy_detection": (dict(shapes={"image": tfds_jax.resize(16, 20), "objects": tfds_jax.pad(5),
                                   "labels": tfds_jax.pad(3), "image/filename": tfds_jax.encode_text(16)}),
                      _detection),
    "toy_pets": (dict(shapes={"image": tfds_jax.crop(12, 12),
                              "segmentation_mask": tfds_jax.resize(8, 8, method="nearest"),
                              "file_name": tfds_jax.encode_text(10, unit="codepoint")}), _pets),
    "toy_audio": (dict(shapes={"audio": tfds_jax.pad(240)}), _audio),
    "toy_text": (dict(as_supervised=True, shapes={"text": tfds_jax.encode_text(80)}), _text),
    "toy_nested": (dict(shapes={("meta", "tokens"): tfds_jax.pad(4), ("meta", "points"): tfds_jax.pad(8)}),
                   _nested),
}


def _expected(d, name, split):
  kwargs, fix = CASES[name]
  records = [fix(r) for r in _records(d, name, split)]
  return jax.tree.map(lambda *xs: np.stack(xs), *records)


def _equal(got, want):
  assert jax.tree.structure(got) == jax.tree.structure(want), (jax.tree.structure(got), jax.tree.structure(want))
  for (path, x), y in zip(jax.tree_util.tree_flatten_with_path(got)[0], jax.tree.leaves(want)):
    x = np.asarray(x)
    assert x.dtype == np.dtype(jax.dtypes.canonicalize_dtype(y.dtype)), (jax.tree_util.keystr(path), x.dtype, y.dtype)
    np.testing.assert_array_equal(x, y, err_msg=jax.tree_util.keystr(path))


@pytest.mark.parametrize("name", sorted(CASES))
def test_every_reader_gives_tfds_records_made_static(dirs, name):
  kwargs, _ = CASES[name]
  want = _expected(dirs["tfrecord"], name, "train")
  n = len(jax.tree.leaves(want)[0])
  for fmt in ("tfrecord", "array_record"):
    loaded = tfds_jax.load(name, "train", data_dir=dirs[fmt], cache=False, **kwargs)
    _equal(loaded.data, want)
    assert tfds_jax.element_spec(loaded) == jax.tree.map(
        lambda x: jax.ShapeDtypeStruct(x.shape[1:], jax.dtypes.canonicalize_dtype(x.dtype)), want)
    with tfds_jax.stream(name, "train", data_dir=dirs[fmt], **kwargs) as s:
      assert tfds_jax.element_spec(s) == tfds_jax.element_spec(loaded)
      batch, state = tfds_jax.next_batch(s, tfds_jax.init(s), n)  # one epoch, in file order
      _equal(batch, want)
      assert (int(state.epoch), int(state.index)) == (1, 0)
      if fmt == "array_record":
        _equal(tfds_jax.batch_at(s, 3 * n, n), want)
    chosen = tfds_jax.from_tfds(name, "train", data_dir=dirs[fmt], cache=False, **kwargs)
    assert isinstance(chosen, tfds_jax.Source)
    _equal(chosen.data, want)
    with tfds_jax.from_tfds(name, "train", data_dir=dirs[fmt], memory_budget=1, **kwargs) as streamed:
      assert isinstance(streamed, tfds_jax.Stream)
      _equal(tfds_jax.next_batch(streamed, tfds_jax.init(streamed), n)[0], want)


def test_eager_loads_pad_to_the_longest_record_by_default(dirs):
  raw = _records(dirs["tfrecord"], "toy_detection", "train")
  longest = max(len(r["objects"]["label"]) for r in raw)
  longest_labels = max(len(r["labels"]) for r in raw)
  for fmt in dirs:
    with pytest.warns(UserWarning, match=r"Dropping string feature\(s\) 'image/filename'"):
      source = tfds_jax.load("toy_detection", "train", data_dir=dirs[fmt], exclude_keys=["image"], cache=False)
    assert set(source.data) == {"image/id", "objects", "objects_length", "labels", "labels_length"}
    for i, r in enumerate(raw):
      assert int(source.data["objects_length"][i]) == len(r["objects"]["label"])
      for k, v in r["objects"].items():
        np.testing.assert_array_equal(source.data["objects"][k][i], _pad(v, longest)[0], err_msg=k)
      np.testing.assert_array_equal(source.data["labels"][i], _pad(r["labels"], longest_labels)[0])
    audio = tfds_jax.load("toy_audio", "test", data_dir=dirs[fmt], cache=False)
    raw_audio = _records(dirs["tfrecord"], "toy_audio", "test")
    longest_audio = max(len(r["audio"]) for r in raw_audio)
    assert audio.data["audio"].shape == (len(raw_audio), longest_audio)
    for i, r in enumerate(raw_audio):
      a, length = _pad(r["audio"], longest_audio)
      np.testing.assert_array_equal(audio.data["audio"][i], a)
      assert int(audio.data["audio_length"][i]) == length
    text = tfds_jax.load("toy_text", "train", data_dir=dirs[fmt], as_supervised=True, cache=False,
                         shapes={"text": tfds_jax.encode_text()})
    raw_text = _records(dirs["tfrecord"], "toy_text", "train")
    longest_text = max(len(r["text"]) for r in raw_text)
    assert text.data["text"].shape == (len(raw_text), longest_text) and text.data["text"].dtype == np.uint8
    decoded = [bytes(np.asarray(t[:n])).decode() for t, n in zip(text.data["text"], text.data["text_length"])]
    assert decoded == [r["text"].decode() for r in raw_text]  # exact, non-ASCII and empty text included


def test_truncation_is_an_error_naming_the_record_unless_asked(dirs, caplog):
  raw = _records(dirs["tfrecord"], "toy_detection", "train")
  first_long = next(i for i, r in enumerate(raw) if len(r["objects"]["label"]) > 2)
  too_long = sum(len(r["objects"]["label"]) > 2 for r in raw)
  kwargs = dict(exclude_keys=["image", "image/filename"], cache=False)
  for fmt in dirs:
    with pytest.raises(ValueError, match=rf"Expected 'objects' of toy_detection\[train\] to fit pad\(2\), got record {first_long}( \(.*\))? with size {len(raw[first_long]['objects']['label'])}.*truncate=True"):
      tfds_jax.load("toy_detection", "train", data_dir=dirs[fmt], shapes={"objects": tfds_jax.pad(2)}, **kwargs)
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="tfds_jax"):
      cut = tfds_jax.load("toy_detection", "train", data_dir=dirs[fmt],
                          shapes={"objects": tfds_jax.pad(2, truncate=True)}, **kwargs)
    assert f"truncated {too_long} record(s) of {len(raw)} of 'objects'" in caplog.text
    for i, r in enumerate(raw):
      assert int(cut.data["objects_length"][i]) == min(2, len(r["objects"]["label"]))
      np.testing.assert_array_equal(cut.data["objects"]["bbox"][i], _pad(r["objects"]["bbox"], 2)[0])
  stream_kwargs = dict(exclude_keys=["image", "image/filename"], shapes={"objects": tfds_jax.pad(2), "labels": tfds_jax.pad(2)})
  with tfds_jax.stream("toy_detection", "train", data_dir=dirs["array_record"], **stream_kwargs) as s:
    with pytest.raises(ValueError, match=rf"got record {first_long} \(toy_detection-train.array_record-00000-of-00001, record {first_long}\) with size"):
      tfds_jax.next_batch(s, tfds_jax.init(s), len(raw))
  with tfds_jax.stream("toy_detection", "train", data_dir=dirs["tfrecord"], **stream_kwargs) as s:
    with pytest.raises(ValueError, match=rf"got the record at position {first_long} of epoch 0"):
      tfds_jax.next_batch(s, tfds_jax.init(s), len(raw))
  stream_kwargs["shapes"] = {"objects": tfds_jax.pad(2, truncate=True), "labels": tfds_jax.pad(2)}
  for fmt in dirs:
    with tfds_jax.stream("toy_detection", "train", data_dir=dirs[fmt], **stream_kwargs) as s:
      caplog.clear()
      with caplog.at_level(logging.WARNING, logger="tfds_jax"):
        state = tfds_jax.init(s)
        for _ in range(2):  # two epochs: counted as read
          _, state = tfds_jax.next_batch(s, state, len(raw))
      assert s.truncated == {("objects",): 2 * too_long}
      assert caplog.text.count("truncating 'objects'") == 1  # reported once, then counted


def test_names_with_a_slash_are_top_level_features(dirs):
  """voc's and coco's image/filename is a feature of its own, never a child of image."""
  d = dirs["tfrecord"]
  names = tfds_jax.load("toy_detection", "test", data_dir=d, include_keys=["image/filename"], cache=False,
                        shapes={"image/filename": tfds_jax.encode_text(20)})
  assert set(names.data) == {"image/filename", "image/filename_length"}
  raw = _records(d, "toy_detection", "test")
  got = [bytes(np.asarray(t[:n])).decode() for t, n in zip(names.data["image/filename"], names.data["image/filename_length"])]
  assert got == [r["image/filename"].decode() for r in raw]
  with pytest.raises(ValueError, match=r"got 'image/filename' \(text, asked for by name: JAX arrays hold numbers only\); pass shapes=\{'image/filename': tfds_jax.encode_text\(16\)\}"):
    tfds_jax.load("toy_detection", "test", data_dir=d, include_keys=["image/filename"])
  ids = tfds_jax.load("toy_detection", "test", data_dir=d, include_keys=["image/id", "image"], cache=False,
                      shapes={"image": tfds_jax.resize(4, 4)})
  assert set(ids.data) == {"image", "image_shape", "image/id"}
  np.testing.assert_array_equal(ids.data["image/id"], [r["image/id"] for r in raw])


def test_text_with_your_own_tokenizer(dirs, cache_dir, monkeypatch, caplog):
  def words(text):
    return [len(w) for w in text.split()]

  raw = _records(dirs["tfrecord"], "toy_text", "train")
  reads = []
  real = _tfds._read_all
  monkeypatch.setattr(_tfds, "_read_all", lambda *a, **k: reads.append(1) or real(*a, **k))
  for fmt in dirs:
    tokens = tfds_jax.tokenize(words, 20, value=-1)
    with caplog.at_level(logging.INFO, logger="tfds_jax"):
      source = tfds_jax.load("toy_text", "train", data_dir=dirs[fmt], as_supervised=True, shapes={"text": tokens})
    assert "a tokenizer without cache_key cannot be fingerprinted" in caplog.text
    for i, r in enumerate(raw):
      ids, n = _pad(words(r["text"].decode()), 20, value=-1)
      np.testing.assert_array_equal(source.data["text"][i], ids)
      assert int(source.data["text_length"][i]) == n
    with tfds_jax.stream("toy_text", "train", data_dir=dirs[fmt], as_supervised=True, shapes={"text": tokens}) as s:
      _equal(tfds_jax.next_batch(s, tfds_jax.init(s), len(raw))[0], source.data)
  named = dict(as_supervised=True, data_dir=dirs["tfrecord"],
               shapes={"text": tfds_jax.tokenize(words, 20, cache_key="word-lengths@1")})
  reads.clear()
  first = tfds_jax.load("toy_text", "train", **named)
  again = tfds_jax.load("toy_text", "train", **named)  # cached under its name
  other = tfds_jax.load("toy_text", "train", **{**named, "shapes": {"text": tfds_jax.tokenize(words, 21, cache_key="word-lengths@1")}})
  assert len(reads) == 2 and other.data["text"].shape[1] == 21
  _equal(again.data, first.data)
  with pytest.raises(Exception, match="Expected the tokenizer .* to return a 1-D sequence of int ids"):
    tfds_jax.load("toy_text", "train", data_dir=dirs["tfrecord"], as_supervised=True, cache=False,
                  shapes={"text": tfds_jax.tokenize(lambda t: t.split(), 8)})


def test_shapes_are_part_of_the_cache_key(dirs, monkeypatch):
  reads = []
  real = _tfds._read_all
  monkeypatch.setattr(_tfds, "_read_all", lambda *a, **k: reads.append(1) or real(*a, **k))
  kwargs = dict(data_dir=dirs["tfrecord"], shapes={"audio": tfds_jax.pad(240)})
  a = tfds_jax.load("toy_audio", "train", **kwargs)
  b = tfds_jax.load("toy_audio", "train", **kwargs)
  c = tfds_jax.load("toy_audio", "train", data_dir=dirs["tfrecord"], shapes={"audio": tfds_jax.pad(250)})
  d = tfds_jax.load("toy_audio", "train", data_dir=dirs["tfrecord"])
  assert len(reads) == 3
  _equal(b.data, a.data)
  assert c.data["audio"].shape[1] == 250 and d.data["audio"].shape[1] == 235
  e = tfds_jax.load("toy_detection", "train", data_dir=dirs["tfrecord"], include_keys=["objects"])
  f = tfds_jax.load("toy_detection", "train", data_dir=dirs["tfrecord"], include_keys=["objects"])
  assert len(reads) == 4  # nested features come back nested from the cache
  _equal(f.data, e.data)


def test_stream_errors_say_exactly_what_to_pass(dirs):
  for fmt in dirs:
    with pytest.raises(ValueError) as e:
      tfds_jax.stream("toy_detection", "train", data_dir=dirs[fmt])
    text = str(e.value)
    assert "a stream needs every size given" in text
    assert "shapes={'image': tfds_jax.resize(" in text and "'labels': tfds_jax.pad(" in text
    assert "'objects': tfds_jax.pad(" in text and "exclude_keys=['image', 'labels', 'objects']" in text
    with pytest.raises(ValueError, match=r"Expected every size of pad\(\) for 'audio' of toy_audio\[train\] in a stream"):
      tfds_jax.stream("toy_audio", "train", data_dir=dirs[fmt], shapes={"audio": tfds_jax.pad()})

  def pads(record):  # a user's pad leaves the static shape unknown: (None,)
    audio = record["audio"][:100]
    return {**record, "audio": tf.pad(audio, [[0, 100 - tf.shape(audio)[0]]]), "loudness": tf.abs(audio)}

  for fmt in dirs:
    with pytest.raises(ValueError) as e:
      tfds_jax.stream("toy_audio", "train", data_dir=dirs[fmt], preprocess=pads)
    text = str(e.value)
    assert "got 'audio' (shape (None,), shapes seen [(100,)" in text and "'loudness' (shape (None,)" in text
    assert "tf.ensure_shape(x, [...])" in text
    assert "exclude_keys=['audio']" in text and "loudness']" not in text  # never a key that does not exist

  def declares(record):
    out = pads(record)
    return {"audio": tf.ensure_shape(out["audio"], [100]), "label": out["label"], "loudness": out["loudness"]}

  with tfds_jax.stream("toy_audio", "train", data_dir=dirs["array_record"], preprocess=declares,
                       shapes={"loudness": tfds_jax.pad(100)}) as s:
    assert tfds_jax.element_spec(s)["audio"].shape == (100,) and "loudness_length" in tfds_jax.element_spec(s)


def test_bad_shapes_are_clear_errors(dirs):
  d = dirs["array_record"]
  cases = [
      (dict(shapes={"imag": tfds_jax.resize(4, 4)}), ValueError, r"Expected shapes keys among the features of toy_pets\[train\] .*got unknown 'imag'"),
      (dict(shapes={"label": tfds_jax.pad(3)}), ValueError, r"Expected a feature with varying dimensions for pad\(3\) at 'label'.*got the fixed shape \(\)"),
      (dict(shapes={"image": tfds_jax.pad(3)}), ValueError, r"Expected 2 size\(s\) for 'image'.*\(None, None, 3\), got pad\(3\)"),
      (dict(shapes={"label": tfds_jax.encode_text(3)}), ValueError, r"Expected a text feature \(a scalar string\) for encode_text\(3\) at 'label'"),
      (dict(shapes={"file_name": tfds_jax.pad(3)}), ValueError, r"Expected a numeric feature for pad\(3\) at 'file_name'.*encode_text"),
      (dict(shapes={"head_bbox": tfds_jax.resize(3, 3)}), ValueError, r"Expected an image \[height, width, channels\] for resize\(3, 3\) at 'head_bbox'"),
      (dict(shapes={"image": "224x224"}), TypeError, r"Expected shapes\['image'\] to be made by tfds_jax.pad"),
      (dict(shapes={3: tfds_jax.pad(3)}), TypeError, r"Expected shapes keys to be feature names"),
  ]
  for kwargs, error, match in cases:
    with pytest.raises(error, match=match):
      tfds_jax.load("toy_pets", "train", data_dir=d, cache=False, **kwargs)
  with pytest.raises(ValueError, match=r"Expected each size of pad to be a positive int or None .* got 0"):
    tfds_jax.pad(0)
  with pytest.raises(ValueError, match=r"Expected method to be one of"):
    tfds_jax.resize(4, 4, method="cubic")
  with pytest.raises(ValueError, match=r"Expected height to be a positive int, got -1"):
    tfds_jax.crop(-1, 4)
  with pytest.raises(ValueError, match=r"Expected unit to be one of \['byte', 'codepoint'\]"):
    tfds_jax.encode_text(4, unit="char")
  with pytest.raises(TypeError, match=r"Expected a tokenizer function"):
    tfds_jax.tokenize("bert", 4)
  with pytest.raises(ValueError, match=r"Expected one shape per feature, got two for \('objects', 'bbox'\)"):
    tfds_jax.load("toy_detection", "train", data_dir=d, include_keys=["objects"],
                  shapes={"objects": tfds_jax.pad(5), ("objects", "bbox"): tfds_jax.pad(5)})
  with pytest.raises(ValueError, match=r"Expected pad\(length\) for 'objects' of toy_detection\[train\], a group of features sharing one length, got resize\(5, 5\)"):
    tfds_jax.load("toy_detection", "train", data_dir=d, include_keys=["objects"],
                  shapes={"objects": tfds_jax.resize(5, 5)})


def test_a_sibling_name_that_exists_is_refused(dirs):
  def adds_length(record):
    return {**record, "audio_length": tf.shape(record["audio"])[0]}

  with pytest.raises(ValueError, match=r"Expected no feature named 'audio_length' in toy_audio\[train\]"):
    tfds_jax.stream("toy_audio", "train", data_dir=dirs["array_record"], preprocess=adds_length,
                    shapes={"audio": tfds_jax.pad(240)})


def test_datasets_with_a_config_are_named_with_it(dirs, tmp_path):
  with pytest.raises(FileNotFoundError) as e:
    tfds_jax.load("toy_glue/sst2", "train", data_dir=tmp_path, local_files_only=True)
  assert f"tfds-jax prepare toy_glue/sst2 --data-dir {tmp_path}`" in str(e.value)
  d = dirs["tfrecord"]
  with pytest.raises(ValueError, match=r"toy_glue/sst2\[train\]"):
    tfds_jax.load("toy_glue/sst2", "train", data_dir=d, include_keys=["sentence"])
  with pytest.raises(ValueError, match=r"toy_glue/sst2\[train\]"):
    tfds_jax.stream("toy_glue/sst2", "train", data_dir=d, include_keys=["sentence"])
  source = tfds_jax.load("toy_glue/cola", "train", data_dir=d, shapes={"sentence": tfds_jax.encode_text(8)})
  assert source.name == "toy_glue/cola"
  sentences = {bytes(np.asarray(t[:n])).decode() for t, n in zip(source.data["sentence"], source.data["sentence_length"])}
  assert sentences == {f"cola {i}" for i in range(5)}


def test_describe_shows_what_each_variable_feature_needs(dirs):
  text = _tfds.describe("toy_detection", data_dir=dirs["tfrecord"])
  assert "'image/filename': Text" in text and "encode_text" in text
  assert "('objects', 'bbox'): BBoxFeature float32[None, 4]" in text
  assert "shapes={'objects': tfds_jax.pad(N)} pads all its fields" in text
  assert "shapes={'image': tfds_jax.resize(H, W)}" in text


@pytest.fixture(scope="module")
def detection(dirs):
  kwargs = CASES["toy_detection"][0]
  eager = tfds_jax.load("toy_detection", "train", data_dir=dirs["tfrecord"], cache=False, **kwargs)
  with tfds_jax.stream("toy_detection", "train", data_dir=dirs["array_record"], **kwargs) as s:
    yield eager, s


@settings(max_examples=8)
@given(seed=st.integers(0, 2**32 - 1), batch_size=st.integers(1, tfds_builders.DETECTION),
       steps=st.integers(1, 6))
def test_padded_sources_keep_every_invariant(detection, seed, batch_size, steps):
  eager, ra = detection
  n = eager.num_records
  state, streamed = tfds_jax.init(eager, seed=seed, shuffle=True), tfds_jax.init(ra, seed=seed, shuffle=True)
  seen = []
  for k in range(steps):
    batch, state = tfds_jax.next_batch(eager, state, batch_size)
    _equal(batch, jax.tree.map(np.asarray, tfds_jax.batch_at(eager, k * batch_size, batch_size, seed)))
    other, streamed = tfds_jax.next_batch(ra, streamed, batch_size)
    _equal(other, jax.tree.map(np.asarray, batch))  # random access: record for record the eager order
    seen.append(np.asarray(batch["image/id"]))
  ids = np.concatenate(seen)[: n * (len(np.concatenate(seen)) // n)].reshape(-1, n)
  for epoch in ids:  # each epoch visits each record once
    np.testing.assert_array_equal(np.sort(epoch), np.sort(np.asarray(eager.data["image/id"])))
  saved = tfds_jax.state_to_dict(eager, state)
  resumed, _ = tfds_jax.next_batch(eager, tfds_jax.state_from_dict(eager, saved, shuffle=True), batch_size)
  _equal(resumed, jax.tree.map(np.asarray, tfds_jax.batch_at(eager, steps * batch_size, batch_size, seed)))


def test_padded_sources_in_pipelines_and_on_a_mesh(detection):
  from jax.sharding import Mesh, NamedSharding, PartitionSpec as P  # pylint: disable=import-outside-toplevel
  eager, _ = detection
  pipe = tfds_jax.pipeline(eager, tfds_jax.random_flip(), tfds_jax.to_float([("objects", "bbox")], scale=2.0),
                           tfds_jax.one_hot(80, [("objects", "label")]), batch_size=4, shuffle=True)
  spec = tfds_jax.element_spec(pipe)
  assert spec["objects"]["label"].shape == (5, 80) and spec["objects"]["bbox"].dtype == np.float32
  state = tfds_jax.init(pipe, seed=3)
  batch, state = jax.jit(lambda p, s: tfds_jax.next_batch(p, s))(pipe, state)
  raw = tfds_jax.batch_at(eager, 0, 4, state.seed)
  np.testing.assert_array_equal(batch["objects"]["bbox"], 2.0 * np.asarray(raw["objects"]["bbox"]))
  np.testing.assert_array_equal(batch["objects_length"], raw["objects_length"])
  mesh = Mesh(np.array(jax.devices()[:4]), ("data",))
  replicated = tfds_jax.from_arrays(eager.data, device=NamedSharding(mesh, P()))
  sharded = tfds_jax.batch_at(replicated, 5, 4, 11, sharding=NamedSharding(mesh, P("data")))
  _equal(jax.tree.map(np.asarray, sharded), jax.tree.map(np.asarray, tfds_jax.batch_at(eager, 5, 4, 11)))
  assert sharded["objects"]["bbox"].sharding.spec == P("data")
  stats = tfds_jax.compute_statistics(eager, features=["image", ("objects", "area")])
  assert stats.mean["image"].shape == (3,) and stats.mean["objects"]["area"].shape == (5,)  # per slot


REAL = [  # the real TFDS builders, fed by tfds.testing.mock_data (random records of their features)
    ("coco/2017", dict(include_keys={"image", "objects"},
                       shapes={"image": tfds_jax.resize(32, 32), "objects": tfds_jax.pad(100, truncate=True)}),
     {"image": (32, 32, 3), "image_shape": (3,), "objects_length": (), ("objects", "bbox"): (100, 4),
      ("objects", "label"): (100,), ("objects", "is_crowd"): (100,)}),
    ("voc/2007", dict(shapes={"image": tfds_jax.resize(32, 32), "image/filename": tfds_jax.encode_text(64, truncate=True)}),
     {"image": (32, 32, 3), "image/filename": (64,), "image/filename_length": (), "objects_length": ()}),
    ("imdb_reviews", dict(as_supervised=True, shapes={"text": tfds_jax.encode_text(512, truncate=True)}),
     {"text": (512,), "text_length": (), "label": ()}),
    ("speech_commands", dict(as_supervised=True, shapes={"audio": tfds_jax.pad(16000, truncate=True)}),
     {"audio": (16000,), "audio_length": (), "label": ()}),
    ("oxford_iiit_pet", dict(shapes={"image": tfds_jax.resize(16, 16),
                                     "segmentation_mask": tfds_jax.resize(16, 16, method="nearest")}),
     {"image": (16, 16, 3), "segmentation_mask": (16, 16, 1), "head_bbox": (4,)}),
    ("glue/sst2", dict(shapes={"sentence": tfds_jax.encode_text(100, truncate=True)}),
     {"sentence": (100,), "label": (), "idx": ()}),
]


@pytest.mark.parametrize("name,kwargs,shapes", REAL, ids=[r[0] for r in REAL])
def test_real_builders_load_with_their_own_features(name, kwargs, shapes):
  with tfds.testing.mock_data(num_examples=6):
    source = tfds_jax.load(name, "train", cache=False, **kwargs)
    raw = list(tfds.as_numpy(tfds.builder(name).as_dataset(split="train", shuffle_files=False)))
  assert source.num_records == 6 and source.name.startswith(name)
  spec = tfds_jax.element_spec(source)
  for feature, shape in shapes.items():
    assert tfds_jax._features.get(spec, feature).shape == shape, feature  # pylint: disable=protected-access
  if name == "imdb_reviews":
    for i, r in enumerate(raw):
      n = int(source.data["text_length"][i])
      assert bytes(np.asarray(source.data["text"][i][:n])) == r["text"][:512]
  if name == "speech_commands":
    for i, r in enumerate(raw):
      np.testing.assert_array_equal(source.data["audio"][i], _pad(r["audio"], 16000)[0])

