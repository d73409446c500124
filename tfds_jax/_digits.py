"""The embedded default dataset: 1,797 real 8x8 handwritten digits.

A TFDS ``GeneratorBasedBuilder`` named ``digits`` that prepares locally, with no
network and no other package, from ``_digits.npz`` next to this module: the
UCI "Optical Recognition of Handwritten Digits" test set (E. Alpaydin and C.
Kaynak, 1998; UCI Machine Learning Repository, doi:10.24432/C50P49, licensed
CC BY 4.0), exactly as scikit-learn ships it (``load_digits``: pixel values
0..16 and labels, in its order; the tests compare the two). Importing this
module registers it with TFDS; ``tfds_jax.load("digits", ...)`` does that for
you.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import tensorflow_datasets as tfds

DATA = Path(__file__).with_name("_digits.npz")  # pixels uint8[1797, 8, 8] in 0..16, labels uint8[1797]

TEST_EVERY = 5  # records 0, 5, 10, ... (360 of them) are "test", the other 1,437 "train"


class Digits(tfds.core.GeneratorBasedBuilder):
  """1,797 8x8 grayscale handwritten digits in 10 classes, prepared offline."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Initial release: test = every 5th record (360), train = the rest (1437)."}

  def _info(self) -> tfds.core.DatasetInfo:
    return self.dataset_info_from_configs(
        description=(
            "The 1,797 8x8 handwritten digits of the UCI 'Optical Recognition of"
            " Handwritten Digits' test set, as scikit-learn ships them (43 writers; each"
            " pixel counts the 'on' cells of a 4x4 block, 0..16, here scaled to"
            " 0..255 as round(v * 255 / 16)). Fixed split: test holds every 5th"
            " record in scikit-learn's order (360), train the other 1,437, so both"
            " mix all writers."),
        features=tfds.features.FeaturesDict({
            "image": tfds.features.Image(shape=(8, 8, 1)),
            "label": tfds.features.ClassLabel(num_classes=10),
        }),
        supervised_keys=("image", "label"),
        homepage="https://archive.ics.uci.edu/dataset/80/optical+recognition+of+handwritten+digits",
        citation=(
            "@misc{alpaydin1998optical, author={Alpaydin, E. and Kaynak, C.},"
            " title={Optical Recognition of Handwritten Digits},"
            " year={1998}, howpublished={UCI Machine Learning Repository},"
            " doi={10.24432/C50P49}}"),
    )

  def _split_generators(self, dl_manager: tfds.download.DownloadManager):
    del dl_manager  # Nothing to download: the data ships with tfds_jax.
    return {"train": self._generate_examples(test=False), "test": self._generate_examples(test=True)}

  def _generate_examples(self, test: bool):
    with np.load(DATA) as data:
      pixels, labels = data["pixels"], data["labels"]
    images = np.round(pixels * (255.0 / 16.0)).astype(np.uint8)[..., None]
    for i in range(len(images)):
      if (i % TEST_EVERY == 0) == test:
        yield i, {"image": images[i], "label": int(labels[i])}
