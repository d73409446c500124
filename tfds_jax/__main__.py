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
  return p


def main(argv: list[str] | None = None) -> int:
  args = parser().parse_args(argv)
  logger = logging.getLogger("tfds_jax")
  logger.setLevel(logging.INFO)
  logger.addHandler(logging.StreamHandler(sys.stderr))
  if args.command == "demo":
    from tfds_jax import _demo  # pylint: disable=import-outside-toplevel
    try:
      _demo.run(args.dataset, epochs=args.epochs, batch_size=args.batch_size, seed=args.seed,
                data_dir=args.data_dir, test_split=args.test_split)
    except (ValueError, FileNotFoundError) as e:
      print(f"tfds-jax demo: error: {e}", file=sys.stderr)
      return 2
  return 0


if __name__ == "__main__":
  sys.exit(main())
