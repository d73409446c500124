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
