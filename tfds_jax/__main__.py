"""Command line: ``tfds-jax`` / ``python -m tfds_jax``."""

from __future__ import annotations

import argparse
import contextlib
import logging
import sys
from pathlib import Path

_BENCH = Path(__file__).resolve().parent.parent / "benchmarks" / "run_all.py"


def _positive(text: str) -> int:
  try:
    value = int(text)
  except ValueError:
    raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
  if value < 1:
    raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
  return value


def parser() -> argparse.ArgumentParser:
  from tfds_jax import __version__  # pylint: disable=import-outside-toplevel
  p = argparse.ArgumentParser(
      prog="tfds-jax",
      description="TensorFlow Datasets inside jitted JAX programs.",
  )
  p.add_argument("--version", action="version", version=f"tfds-jax {__version__}")
  sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
  demo = sub.add_parser(
      "demo", help="train a small MLP inside one jitted fori_loop per epoch",
      description="Loads a TFDS image-classification dataset (default: the embedded"
      " 'digits', prepared offline on first use), trains an optax MLP on shuffled"
      " next_batch batches inside one jitted lax.fori_loop per epoch, and prints"
      " per-epoch loss, test accuracy and records per second.")
  demo.add_argument("--dataset", default="digits", help="TFDS dataset name (default: digits)")
  demo.add_argument("--epochs", type=_positive, default=15)
  demo.add_argument("--batch-size", type=_positive, default=32)
  demo.add_argument("--seed", type=int, default=0)
  demo.add_argument("--data-dir", default=None, help="TFDS data directory")
  demo.add_argument("--test-split", default=None, help="default: 'test', else 'validation'")
  info = sub.add_parser("info", help="show a dataset's features, splits and decoded sizes",
                        description="Shows a TFDS dataset's features, supervised keys, splits,"
                        " record counts and decoded sizes (what load would hold in memory).")
  info.add_argument("name", help="TFDS dataset name, e.g. mnist or digits")
  info.add_argument("--data-dir", default=None, help="TFDS data directory")
  prep = sub.add_parser("prepare", help="download and prepare a dataset, with progress (or convert its file format)",
                        description="Downloads and prepares a TFDS dataset once, so that"
                        " load(..., local_files_only=True) can read it offline.")
  prep.add_argument("name", help="TFDS dataset name, e.g. mnist or digits")
  prep.add_argument("--data-dir", default=None, help="TFDS data directory")
  prep.add_argument("--file-format", choices=["tfrecord", "array_record"], default=None,
                    help="array_record allows random access (default: TFDS's, tfrecord)")
  prep.add_argument("--beam-num-workers", type=_positive, default=None,
                    help="processes for Beam-based datasets (needs apache-beam: uv run --extra beam)")
  bench = sub.add_parser("bench", help="build the benchmark data and run every figure" + (
                             "" if _BENCH.exists() else " (only in a source checkout of tfds_jax)"),
                         description="Runs benchmarks/run_all.py from a source checkout: builds the"
                         " benchmark datasets, runs every figure against tf.data, Grain and datarax,"
                         " and writes BENCHMARKS.md with tables and plots.")
  bench.add_argument("--quick", action="store_true", help="fewer repeats and sizes (smoke run)")
  bench.add_argument("--no-datarax", action="store_true", help="leave datarax out")
  return p


def _bench(args) -> int:
  import subprocess  # pylint: disable=import-outside-toplevel
  script = _BENCH
  if not script.exists():
    raise FileNotFoundError(
        f"Expected the benchmarks of a source checkout at {script.parent}, got none (this is an"
        " installed tfds_jax); clone the tfds_jax repository and run, in it, `python3 -m uv run"
        " --locked --extra tf --group bench tfds-jax bench`.")
  flags = [f for f, on in (("--quick", args.quick), ("--no-datarax", args.no_datarax)) if on]
  return subprocess.run([sys.executable, str(script), *flags], cwd=script.parent.parent).returncode


@contextlib.contextmanager
def _log_to_stderr():
  """While the command runs, tfds_jax's log lines go to stderr once each, as ``tfds_jax: message``.

  Its own handler, and no propagation: a handler that a dependency puts on the
  root logger (``logging.basicConfig``) would print every line a second time.
  The logger is left as it was found afterwards (``main`` may run in a test or
  a notebook).
  """
  logger = logging.getLogger("tfds_jax")
  saved = logger.level, logger.propagate
  handler = _Stderr()
  handler.setFormatter(logging.Formatter("%(name)s: %(message)s"))
  logger.setLevel(logging.INFO)
  logger.propagate = False
  logger.addHandler(handler)
  try:
    yield
  finally:
    logger.removeHandler(handler)
    logger.setLevel(saved[0])
    logger.propagate = saved[1]


class _Stderr(logging.StreamHandler):
  """A handler writing to whatever ``sys.stderr`` is when a record comes."""

  @property
  def stream(self):
    return sys.stderr

  @stream.setter
  def stream(self, value):
    del value


def main(argv: list[str] | None = None) -> int:
  args = parser().parse_args(argv)
  with _log_to_stderr():
    return _run(args)


def _run(args) -> int:
  from tfds_jax import _tfds  # pylint: disable=import-outside-toplevel
  try:
    if args.command == "demo":
      from tfds_jax import _demo  # pylint: disable=import-outside-toplevel
      _demo.run(args.dataset, epochs=args.epochs, batch_size=args.batch_size, seed=args.seed,
                data_dir=args.data_dir, test_split=args.test_split)
    elif args.command == "info":
      print(_tfds.describe(args.name, data_dir=args.data_dir))
    elif args.command == "bench":
      return _bench(args)
    elif args.command == "prepare":
      path = _tfds.prepare(args.name, data_dir=args.data_dir, file_format=args.file_format,
                           beam_num_workers=args.beam_num_workers)
      print(f"prepared {args.name} in {path}")
  except (ValueError, FileNotFoundError, ImportError, ConnectionError) as e:
    print(f"tfds-jax {args.command}: error: {e}", file=sys.stderr)
    return 2
  return 0


if __name__ == "__main__":
  sys.exit(main())
