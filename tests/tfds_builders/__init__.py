"""Tiny TFDS datasets built locally for the tests (nothing is downloaded)."""

import numpy as np
import tensorflow_datasets as tfds

TRAIN, TEST = 40, 12


def toy_example(i: int) -> dict:
  rng = np.random.RandomState(i)
  return {
      "image": rng.randint(0, 256, (8, 8, 1)).astype(np.uint8),
      "label": i % 3,
      "id": f"record-{i}",
      "score": np.float32(i / 7.0),
      "meta": {"a": np.int32(-i), "b": np.array([i, 2 * i], np.float32)},
  }


class ToyImages(tfds.core.GeneratorBasedBuilder):
  """Fixed-shape PNG images, a class label, a string, a float and a nested dict."""

  VERSION = tfds.core.Version("1.0.0")

  def _info(self):
    return self.dataset_info_from_configs(
        description="Toy images for tfds_jax tests.",
        features=tfds.features.FeaturesDict({
            "image": tfds.features.Image(shape=(8, 8, 1)),
            "label": tfds.features.ClassLabel(names=["a", "b", "c"]),
            "id": tfds.features.Text(),
            "score": tfds.features.Scalar(dtype=np.float32),
            "meta": tfds.features.FeaturesDict({
                "a": tfds.features.Scalar(dtype=np.int32),
                "b": tfds.features.Tensor(shape=(2,), dtype=np.float32),
            }),
        }),
        supervised_keys=("image", "label"),
    )

  def _split_generators(self, dl_manager):
    return {"train": self._generate_examples(0, TRAIN), "test": self._generate_examples(TRAIN, TRAIN + TEST)}

  def _generate_examples(self, start, stop):
    for i in range(start, stop):
      yield i, toy_example(i)


class ToyRagged(tfds.core.GeneratorBasedBuilder):
  """Images of varying size: not loadable eagerly without a resizing decoder."""

  VERSION = tfds.core.Version("1.0.0")

  def _info(self):
    return self.dataset_info_from_configs(
        description="Variable-size images for tfds_jax tests.",
        features=tfds.features.FeaturesDict({
            "image": tfds.features.Image(shape=(None, None, 1)),
            "label": tfds.features.ClassLabel(num_classes=2),
        }),
        supervised_keys=("image", "label"),
    )

  def _split_generators(self, dl_manager):
    return {"train": self._generate_examples()}

  def _generate_examples(self):
    for i in range(10):
      yield i, {"image": np.full((4 + i % 3, 5 + i % 2, 1), i, np.uint8), "label": i % 2}


class ToyBigInts(tfds.core.GeneratorBasedBuilder):
  """An int64 feature whose values do not fit int32."""

  VERSION = tfds.core.Version("1.0.0")

  def _info(self):
    return self.dataset_info_from_configs(
        features=tfds.features.FeaturesDict({"big": tfds.features.Scalar(dtype=np.int64)}))

  def _split_generators(self, dl_manager):
    return {"train": self._generate_examples()}

  def _generate_examples(self):
    for i in range(4):
      yield i, {"big": np.int64(2**40 + i)}


# --- Mirrors of real TFDS builders (their `_info()` features), tiny and local ----------------

DETECTION = 7  # records per split of the detection mirrors


def detection_example(i: int) -> dict:
  """A coco/2017-like record: a JPEG of varying size, its name and id, 0-4 objects."""
  rng = np.random.RandomState(100 + i)
  k = i % 5
  lo = rng.uniform(0, 0.5, (k, 2)).astype(np.float32)
  return {
      "image": rng.randint(0, 256, (12 + 3 * i, 16 + 2 * (i % 4), 3)).astype(np.uint8),
      "image/filename": f"{i:012d}.jpg",
      "image/id": np.int64(397133 + i),  # coco's ids are int64 (and fit int32)
      "objects": {
          "id": np.arange(k, dtype=np.int64) + 10 * i,
          "area": (np.arange(k, dtype=np.int64) + 1) * 100,
          "bbox": np.concatenate([lo, lo + 0.25], axis=1),
          "label": (np.arange(k) * 7 + i) % 80,
          "is_crowd": np.arange(k) % 2 == 1,
      },
      "labels": np.arange(i % 3) % 20,  # voc's Sequence(ClassLabel): a Sequence of one feature
  }


class ToyDetection(tfds.core.GeneratorBasedBuilder):
  """coco/2017's features (plus voc's `labels`): `image/filename` is a top-level name."""

  VERSION = tfds.core.Version("1.0.0")

  def _info(self):
    return self.dataset_info_from_configs(
        features=tfds.features.FeaturesDict({
            "image": tfds.features.Image(encoding_format="jpeg"),
            "image/filename": tfds.features.Text(),
            "image/id": np.int64,
            "objects": tfds.features.Sequence({
                "id": np.int64,
                "area": np.int64,
                "bbox": tfds.features.BBoxFeature(),
                "label": tfds.features.ClassLabel(num_classes=80),
                "is_crowd": np.bool_,
            }),
            "labels": tfds.features.Sequence(tfds.features.ClassLabel(num_classes=20)),
        }))

  def _split_generators(self, dl_manager):
    return {"train": self._generate_examples(0, DETECTION),
            "test": self._generate_examples(DETECTION, DETECTION + 4)}

  def _generate_examples(self, start, stop):
    for i in range(start, stop):
      yield i, detection_example(i)


def pets_example(i: int) -> dict:
  """An oxford_iiit_pet-like record: an image and its mask of one varying size, a box, a name."""
  rng = np.random.RandomState(200 + i)
  h, w = 9 + (i * 5) % 11, 7 + (i * 3) % 13
  return {
      "image": rng.randint(0, 256, (h, w, 3)).astype(np.uint8),
      "label": i % 4,
      "species": i % 2,
      "file_name": f"pet_{i}.jpg",
      "segmentation_mask": rng.randint(0, 3, (h, w, 1)).astype(np.uint8),
      "head_bbox": np.array([0.1, 0.2, 0.6, 0.7], np.float32),
  }


class ToyPets(tfds.core.GeneratorBasedBuilder):
  """oxford_iiit_pet's features: variable-size PNG images with a mask, a box and a file name."""

  VERSION = tfds.core.Version("1.0.0")

  def _info(self):
    return self.dataset_info_from_configs(
        features=tfds.features.FeaturesDict({
            "image": tfds.features.Image(),
            "label": tfds.features.ClassLabel(num_classes=4),
            "species": tfds.features.ClassLabel(names=["cat", "dog"]),
            "file_name": tfds.features.Text(),
            "segmentation_mask": tfds.features.Image(shape=(None, None, 1)),
            "head_bbox": tfds.features.BBoxFeature(),
        }),
        supervised_keys=("image", "label"))

  def _split_generators(self, dl_manager):
    return {"train": self._generate_examples(0, 23), "test": self._generate_examples(23, 30)}

  def _generate_examples(self, start, stop):
    for i in range(start, stop):
      yield i, pets_example(i)


def audio_example(i: int) -> dict:
  """A speech_commands-like record: int16 samples of varying length."""
  rng = np.random.RandomState(300 + i)
  return {"audio": rng.randint(-2**15, 2**15, 50 + 37 * (i % 6)).astype(np.int16), "label": i % 12}


class ToyAudio(tfds.core.GeneratorBasedBuilder):
  """speech_commands's features, with raw samples (speech_commands stores WAV, decoded to the
  same int16 [None] tensor; encoding WAV needs pydub and ffmpeg, which tests do without)."""

  VERSION = tfds.core.Version("1.0.0")

  def _info(self):
    return self.dataset_info_from_configs(
        features=tfds.features.FeaturesDict({
            "audio": tfds.features.Audio(file_format=None, sample_rate=16000, dtype=np.int16),
            "label": tfds.features.ClassLabel(num_classes=12),
        }),
        supervised_keys=("audio", "label"))

  def _split_generators(self, dl_manager):
    return {"train": self._generate_examples(0, 20), "test": self._generate_examples(20, 26)}

  def _generate_examples(self, start, stop):
    for i in range(start, stop):
      yield i, audio_example(i)


TEXTS = ["A great film.", "Terrible, terrible acting!", "", "Ça m'a plu — vraiment 👍",
         "so-so", "The plot was thin but the score was wonderful and the cast did well."]


def text_example(i: int) -> dict:
  """An imdb_reviews-like record: UTF-8 text (some non-ASCII, one empty) and a label."""
  return {"text": TEXTS[i % len(TEXTS)] + (" more" * (i // len(TEXTS))), "label": i % 2}


class ToyText(tfds.core.GeneratorBasedBuilder):
  """imdb_reviews's features: (text, label) supervised keys."""

  VERSION = tfds.core.Version("1.0.0")

  def _info(self):
    return self.dataset_info_from_configs(
        features=tfds.features.FeaturesDict({
            "text": tfds.features.Text(),
            "label": tfds.features.ClassLabel(names=["neg", "pos"]),
        }),
        supervised_keys=("text", "label"))

  def _split_generators(self, dl_manager):
    return {"train": self._generate_examples(0, 18), "test": self._generate_examples(18, 24)}

  def _generate_examples(self, start, stop):
    for i in range(start, stop):
      yield i, text_example(i)


class ToyNested(tfds.core.GeneratorBasedBuilder):
  """Nested FeaturesDicts with independent variable lengths (not a Sequence)."""

  VERSION = tfds.core.Version("1.0.0")

  def _info(self):
    return self.dataset_info_from_configs(
        features=tfds.features.FeaturesDict({
            "meta": tfds.features.FeaturesDict({
                "tokens": tfds.features.Tensor(shape=(None,), dtype=np.int32),
                "points": tfds.features.Tensor(shape=(None, 2), dtype=np.float32),
                "scale": np.float32,
            }),
            "label": np.int64,
        }))

  def _split_generators(self, dl_manager):
    return {"train": self._generate_examples()}

  def _generate_examples(self):
    for i in range(9):
      yield i, {"meta": {"tokens": np.arange(i % 4, dtype=np.int32) + i,
                         "points": np.full((7 - i % 5, 2), i, np.float32), "scale": i / 2},
                "label": i}


class ToyGlueConfig(tfds.core.BuilderConfig):
  pass


class ToyGlue(tfds.core.GeneratorBasedBuilder):
  """A dataset with configs, as glue/sst2: named and prepared with its config."""

  VERSION = tfds.core.Version("1.0.0")
  BUILDER_CONFIGS = [ToyGlueConfig(name="sst2"), ToyGlueConfig(name="cola")]

  def _info(self):
    return self.dataset_info_from_configs(
        features=tfds.features.FeaturesDict({
            "sentence": tfds.features.Text(),
            "label": tfds.features.ClassLabel(num_classes=2),
            "idx": np.int32,
        }))

  def _split_generators(self, dl_manager):
    return {"train": self._generate_examples()}

  def _generate_examples(self):
    for i in range(5):
      yield i, {"sentence": f"{self.builder_config.name} {i}", "label": i % 2, "idx": i}


class ToyDownload(tfds.core.GeneratorBasedBuilder):
  """A dataset whose source file sits on a host nothing listens on."""

  VERSION = tfds.core.Version("1.0.0")

  def _info(self):
    return self.dataset_info_from_configs(features=tfds.features.FeaturesDict({"x": np.int32}))

  def _split_generators(self, dl_manager):
    return {"train": self._generate_examples(dl_manager.download("http://127.0.0.1:9/toy.bin"))}  # refused

  def _generate_examples(self, path):
    for i in range(len(path.read_bytes())):
      yield i, {"x": i}
