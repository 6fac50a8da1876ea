"""The `inertia` command: parse, call the library, print."""

from __future__ import annotations

import argparse
import sys

from . import __version__


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="inertia",
        description="Computational inertia I = ½‖θ̇‖² + L(θ) of learning dynamics.",
    )
    parser.add_argument("--version", action="version", version=f"inertia {__version__}")
    return parser


def main(argv: list[str] | None = None) -> int:
    build_parser().parse_args(argv)
    return 0


if __name__ == "__main__":
    sys.exit(main())
