"""Benchmark datasets, built locally: PNG-encoded like the real MNIST and CIFAR-10.

``bench_mnist``: 60,000 train / 10,000 test records of 28x28x1 uint8 images,
made by upscaling scikit-learn's real 8x8 digits with random shifts and noise
(so they compress and decode like handwriting, not like noise).
``bench_cifar``: 50,000 train / 10,000 test records of 32x32x3 uint8 images,
smooth random colour fields with noise.
``bench_mnist_small``: 1,024 train / 128 test records made as ``bench_mnist``'s, for smoke runs.
``bench_large``: 12,800 train records of raw 224x224x3 uint8 images (1.9 GB,
ImageNet-sized records), prepared as ArrayRecord only, for streaming memory.
``bench_varimages``: 6,000 JPEG images of varying size (96 to 320 pixels a
side), as tf_flowers or imagenet2012 hold them; ``bench_objects``: 100,000
records of coco/2017's ``objects`` Sequence (0 to 40 boxes, about 7 on
average); both for the static-shape figures (features.py).

Run ``python benchmarks/datasets.py`` to prepare both under
``benchmarks/data`` (or ``$BENCH_DATA_DIR``); the benchmarks call
:func:`prepare` themselves.
"""

from __future__ import annotations

import functools
import json
import os
import shutil
import sys
from pathlib import Path

import numpy as np

DATA_DIR = Path(os.environ.get("BENCH_DATA_DIR", Path(__file__).parent / "data"))
LARGE_RECORDS = 12_800
VARIMAGES_RECORDS = 6_000
OBJECTS_RECORDS = 100_000


def _mnist_like(i: int, digits, targets) -> tuple[np.ndarray, int]:
  rng = np.random.default_rng(i)
  k = int(rng.integers(len(digits)))
  big = np.kron(digits[k], np.ones((3, 3)))  # 24x24
  image = np.zeros((28, 28))
  dy, dx = rng.integers(0, 5, 2)
  image[dy:dy + 24, dx:dx + 24] = big * (255.0 / 16.0)
  image = np.clip(image + rng.normal(0, 8, image.shape) * (image > 0), 0, 255)
  return image.astype(np.uint8)[..., None], int(targets[k])


def _cifar_like(i: int) -> tuple[np.ndarray, int]:
  rng = np.random.default_rng(i)
  coarse = rng.integers(0, 256, (4, 4, 3)).astype(np.float64)
  image = np.kron(coarse, np.ones((8, 8, 1))) + rng.normal(0, 12, (32, 32, 3))
  return np.clip(image, 0, 255).astype(np.uint8), int(rng.integers(10))


def _varimage(i: int) -> dict:
  rng = np.random.default_rng(i)
  h, w = rng.integers(96, 321, 2)
  coarse = rng.integers(0, 256, (4, 4, 3)).astype(np.float32)
  image = np.kron(coarse, np.ones((-(-h // 4), -(-w // 4), 1), np.float32))[:h, :w]
  image += rng.normal(0, 10, image.shape).astype(np.float32)
  return {"image": np.clip(image, 0, 255).astype(np.uint8), "label": int(rng.integers(10))}


def _objects(i: int) -> dict:
  rng = np.random.default_rng(i)
  k = int(min(40, rng.geometric(1 / 7.0) - 1))  # coco has about 7 objects per image, a long tail
  lo = rng.uniform(0, 0.8, (k, 2)).astype(np.float32)
  return {"image/id": i, "objects": {
      "area": rng.integers(1, 100_000, k), "bbox": np.concatenate([lo, lo + 0.2], axis=1),
      "label": rng.integers(0, 80, k), "is_crowd": rng.random(k) < 0.05}}


@functools.lru_cache(maxsize=None)
def builders():
  """Defines (and so registers with TFDS) the two benchmark builders, once."""
  import tensorflow_datasets as tfds  # pylint: disable=import-outside-toplevel

  class BenchMnist(tfds.core.GeneratorBasedBuilder):
    """MNIST-shaped: 28x28x1 PNG digits, 10 classes."""

    VERSION = tfds.core.Version("1.0.0")

    def _info(self):
      return self.dataset_info_from_configs(
          description="MNIST-shaped benchmark data built from upscaled scikit-learn digits.",
          features=tfds.features.FeaturesDict({
              "image": tfds.features.Image(shape=(28, 28, 1)),
              "label": tfds.features.ClassLabel(num_classes=10)}),
          supervised_keys=("image", "label"))

    def _split_generators(self, dl_manager):
      return {"train": self._generate_examples(0, 60_000), "test": self._generate_examples(60_000, 70_000)}

    def _generate_examples(self, start, stop):
      from sklearn.datasets import load_digits  # pylint: disable=import-outside-toplevel
      d = load_digits()
      for i in range(start, stop):
        image, label = _mnist_like(i, d.images, d.target)
        yield i, {"image": image, "label": label}

  class BenchMnistSmall(BenchMnist):
    """The same MNIST-shaped records, 1,024 train / 128 test: smoke runs (device.py --smoke)."""

    def _split_generators(self, dl_manager):
      return {"train": self._generate_examples(0, 1024), "test": self._generate_examples(1024, 1152)}

  class BenchCifar(tfds.core.GeneratorBasedBuilder):
    """CIFAR-shaped: 32x32x3 PNG images, 10 classes."""

    VERSION = tfds.core.Version("1.0.0")

    def _info(self):
      return self.dataset_info_from_configs(
          description="CIFAR-shaped benchmark data: smooth random colour fields.",
          features=tfds.features.FeaturesDict({
              "image": tfds.features.Image(shape=(32, 32, 3)),
              "label": tfds.features.ClassLabel(num_classes=10)}),
          supervised_keys=("image", "label"))

    def _split_generators(self, dl_manager):
      return {"train": self._generate_examples(0, 50_000), "test": self._generate_examples(50_000, 60_000)}

    def _generate_examples(self, start, stop):
      for i in range(start, stop):
        image, label = _cifar_like(i)
        yield i, {"image": image, "label": label}

  class BenchLarge(tfds.core.GeneratorBasedBuilder):
    """ImageNet-sized raw records: 224x224x3 uint8, 10 classes, 1.9 GB."""

    VERSION = tfds.core.Version("1.0.0")

    def _info(self):
      return self.dataset_info_from_configs(
          description="Large raw-image records for streaming-memory benchmarks.",
          features=tfds.features.FeaturesDict({
              "image": tfds.features.Tensor(shape=(224, 224, 3), dtype=np.uint8,
                                            encoding=tfds.features.Encoding.BYTES),
              "label": tfds.features.ClassLabel(num_classes=10)}),
          supervised_keys=("image", "label"))

    def _split_generators(self, dl_manager):
      return {"train": self._generate_examples(LARGE_RECORDS)}

    def _generate_examples(self, n):
      pool = np.random.default_rng(0).integers(0, 256, (16, 224, 224, 3), dtype=np.uint8)
      for i in range(n):
        image = pool[i % 16].copy()
        image[0, 0] = (i % 256, i // 256 % 256, i // 65536)  # every record distinct
        yield i, {"image": image, "label": i % 10}

  class BenchVarimages(tfds.core.GeneratorBasedBuilder):
    """tf_flowers-like: JPEG images of varying size (96 to 320 pixels a side), 10 classes."""

    VERSION = tfds.core.Version("1.0.0")

    def _info(self):
      return self.dataset_info_from_configs(
          description="Variable-size JPEG images: smooth random colour fields with noise.",
          features=tfds.features.FeaturesDict({
              "image": tfds.features.Image(encoding_format="jpeg"),
              "label": tfds.features.ClassLabel(num_classes=10)}),
          supervised_keys=("image", "label"))

    def _split_generators(self, dl_manager):
      return {"train": self._generate_examples(VARIMAGES_RECORDS)}

    def _generate_examples(self, n):
      for i in range(n):
        yield i, _varimage(i)

  class BenchObjects(tfds.core.GeneratorBasedBuilder):
    """coco-like annotations: a Sequence of 0 to 40 objects (box, label, area, crowd flag) per record."""

    VERSION = tfds.core.Version("1.0.0")

    def _info(self):
      return self.dataset_info_from_configs(
          description="coco/2017's objects Sequence, without the images.",
          features=tfds.features.FeaturesDict({
              "image/id": np.int64,
              "objects": tfds.features.Sequence({
                  "area": np.int64,
                  "bbox": tfds.features.BBoxFeature(),
                  "label": tfds.features.ClassLabel(num_classes=80),
                  "is_crowd": np.bool_}),
          }))

    def _split_generators(self, dl_manager):
      return {"train": self._generate_examples(OBJECTS_RECORDS)}

    def _generate_examples(self, n):
      for i in range(n):
        yield i, _objects(i)

  return {"bench_mnist": BenchMnist, "bench_mnist_small": BenchMnistSmall, "bench_cifar": BenchCifar,
          "bench_large": BenchLarge, "bench_varimages": BenchVarimages, "bench_objects": BenchObjects}


def prepare(names=("bench_mnist", "bench_cifar"), file_format: str = "tfrecord") -> Path:
  """Prepares the named benchmark datasets (once) and returns their data_dir.

  TFRecord files go to ``DATA_DIR``, other formats to ``DATA_DIR / file_format``.
  """
  data_dir = DATA_DIR if file_format == "tfrecord" else DATA_DIR / file_format
  classes = builders()
  for name in names:
    # Files of another format here (a stream that prepared a missing dataset itself, say):
    # TFDS would refuse the builder, and a stream would silently read them with tf.data.
    for info in (data_dir / name).glob("*/dataset_info.json"):
      if json.loads(info.read_text()).get("fileFormat", "tfrecord") != file_format:
        print(f"[datasets] {info.parent} holds another format; preparing it again", file=sys.stderr)
        shutil.rmtree(info.parent)
    b = classes[name](data_dir=data_dir, file_format=file_format)
    if not b.is_prepared():
      print(f"[datasets] preparing {name} ({file_format}) in {data_dir} ...", file=sys.stderr, flush=True)
      b.download_and_prepare()
  return data_dir


if __name__ == "__main__":
  prepare()
  prepare(file_format="array_record")
