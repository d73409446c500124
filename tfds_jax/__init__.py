"""tfds_jax: TensorFlow Datasets inside jitted JAX programs.

Sources are immutable pytrees of arrays; iteration state is a separate
``SourceState`` pytree; ``init``, ``next_batch`` and ``batch_at`` are pure.
"""

from tfds_jax._array_record import RecordError
from tfds_jax._checkpoint import state_from_dict
from tfds_jax._checkpoint import state_to_dict
from tfds_jax._drivers import run_epochs
from tfds_jax._features import FixedShape
from tfds_jax._features import crop
from tfds_jax._features import encode_text
from tfds_jax._features import pad
from tfds_jax._features import resize
from tfds_jax._features import tokenize
from tfds_jax._drivers import run_steps
from tfds_jax._pipeline import Pipeline
from tfds_jax._pipeline import pipeline
from tfds_jax._shuffle import index_shuffle
from tfds_jax._source import Source
from tfds_jax._source import SourceState
from tfds_jax._source import as_seed
from tfds_jax._source import batch_at
from tfds_jax._source import element_spec
from tfds_jax._source import from_arrays
from tfds_jax._source import init
from tfds_jax._source import next_batch
from tfds_jax._source import record_indices
from tfds_jax._stages import Stage
from tfds_jax._stages import chain
from tfds_jax._stages import normalize
from tfds_jax._stages import one_hot
from tfds_jax._stages import random_crop
from tfds_jax._stages import random_flip
from tfds_jax._stages import record_keys
from tfds_jax._stages import stage
from tfds_jax._stages import to_float
from tfds_jax._statistics import Statistics
from tfds_jax._statistics import compute_statistics
from tfds_jax._stream import Stream
from tfds_jax._stream import from_tfds
from tfds_jax._stream import stream
from tfds_jax._tfds import DatasetInfoRef
from tfds_jax._tfds import info
from tfds_jax._tfds import load
from tfds_jax._tfds import prepare
from tfds_jax._types import Batch
from tfds_jax._types import PRNGKey

__version__ = "0.1.0"

__all__ = [
    "Batch",
    "DatasetInfoRef",
    "FixedShape",
    "PRNGKey",
    "Pipeline",
    "RecordError",
    "Source",
    "SourceState",
    "Stage",
    "Statistics",
    "Stream",
    "as_seed",
    "batch_at",
    "chain",
    "compute_statistics",
    "crop",
    "element_spec",
    "encode_text",
    "from_arrays",
    "from_tfds",
    "index_shuffle",
    "info",
    "init",
    "load",
    "next_batch",
    "normalize",
    "one_hot",
    "pad",
    "pipeline",
    "prepare",
    "random_crop",
    "random_flip",
    "record_indices",
    "record_keys",
    "resize",
    "run_epochs",
    "run_steps",
    "stage",
    "state_from_dict",
    "state_to_dict",
    "stream",
    "to_float",
    "tokenize",
]
