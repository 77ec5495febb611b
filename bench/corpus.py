"""The benches' split of a music folder into catalogue and held-out tracks (one seeded shuffle for all)."""

from __future__ import annotations

import argparse
import random
from pathlib import Path

from bench.accuracy import list_tracks

__all__ = ["add_split_arguments", "split"]


def add_split_arguments(parser: argparse.ArgumentParser) -> None:
    """``MUSIC --catalogue N --negatives N --seed N``, with the defaults every real-music bench uses."""
    parser.add_argument("music", type=Path, help="a folder of real music (../shared/data/fetch-music.sh)")
    parser.add_argument("--catalogue", type=int, default=150, help="tracks in the catalogue (default 150)")
    parser.add_argument("--negatives", type=int, default=50, help="tracks held out of it (default 50)")
    parser.add_argument("--seed", type=int, default=1, help="seed of the shuffle (default 1)")


def split(parser: argparse.ArgumentParser, args: argparse.Namespace) -> tuple[list[Path], list[Path]]:
    """(catalogue tracks, held-out tracks) after the seeded shuffle; a usage error when none is held out."""
    tracks = list_tracks(args.music)
    random.Random(args.seed).shuffle(tracks)
    catalogue, held_out = tracks[:args.catalogue], tracks[args.catalogue:args.catalogue + args.negatives]
    if not held_out:
        parser.error(f"{args.music} holds no track past the first {args.catalogue}")
    return catalogue, held_out
