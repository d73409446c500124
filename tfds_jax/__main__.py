"""Command line: ``tfds-jax`` / ``python -m tfds_jax``."""

from __future__ import annotations

import argparse
import logging
import sys


def _positive(text: str) -> int:
  try:
    value = int(text)
  except ValueError:
    raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
  if value < 1:
    raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
  return value


def parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(
      prog="tfds-jax",
      description="TensorFlow Datasets inside jitted JAX programs.",
  )
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
  prep = sub.add_parser("prepare", help="download and prepare a dataset, with progress",
                        description="Downloads and prepares a TFDS dataset once, so that"
                        " load(..., local_files_only=True) can read it offline.")
  prep.add_argument("name", help="TFDS dataset name, e.g. mnist or digits")
  prep.add_argument("--data-dir", default=None, help="TFDS data directory")
  prep.add_argument("--file-format", choices=["tfrecord", "array_record"], default=None,
                    help="array_record allows random access (default: TFDS's, tfrecord)")
  prep.add_argument("--beam-num-workers", type=_positive, default=None,
                    help="processes for Beam-based datasets (needs apache-beam: uv run --extra beam)")
  bench = sub.add_parser("bench", help="build the benchmark data and run every figure",
                         description="Runs benchmarks/run_all.py from a source checkout: builds the"
                         " benchmark datasets, runs every figure against tf.data, Grain and datarax,"
                         " and writes BENCHMARKS.md with tables and plots.")
  bench.add_argument("--quick", action="store_true", help="fewer repeats and sizes (smoke run)")
  bench.add_argument("--no-datarax", action="store_true", help="leave datarax out")
  return p


def _bench(args) -> int:
  import subprocess  # pylint: disable=import-outside-toplevel
  from pathlib import Path  # pylint: disable=import-outside-toplevel
  script = Path(__file__).resolve().parent.parent / "benchmarks" / "run_all.py"
  if not script.exists():
    raise FileNotFoundError(
        f"Expected the benchmarks in a source checkout at {script.parent}, got none; run"
        " `tfds-jax bench` from a clone of the tfds_jax repository.")
  flags = [f for f, on in (("--quick", args.quick), ("--no-datarax", args.no_datarax)) if on]
  return subprocess.run([sys.executable, str(script), *flags], cwd=script.parent.parent).returncode


def main(argv: list[str] | None = None) -> int:
  args = parser().parse_args(argv)
  logger = logging.getLogger("tfds_jax")
  logger.setLevel(logging.INFO)
  if not logger.handlers:  # main() may run more than once in a process
    logger.addHandler(logging.StreamHandler(sys.stderr))
  from tfds_jax import _demo, _tfds  # pylint: disable=import-outside-toplevel
  try:
    if args.command == "demo":
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
  except (ValueError, FileNotFoundError, ImportError) as e:
    print(f"tfds-jax {args.command}: error: {e}", file=sys.stderr)
    return 2
  return 0


if __name__ == "__main__":
  sys.exit(main())
