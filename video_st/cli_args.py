"""The command-line side of a run's config: ``--config A.yaml [B.yaml ...]`` and ``key=value`` overrides in any
order, as every tool that builds a run takes them (train_net, test_net, submit, visualize_tokens), and the
``--views T,S`` type of the tools that test. :func:`video_st.config.load_config` merges what they parse."""

from __future__ import annotations

import argparse
import sys
from collections import Counter
from collections.abc import Sequence


def views_argument(text: str) -> tuple[int, int]:
    """argparse type of ``--views T,S`` (temporal, spatial test views), e.g. ``1,3``."""
    try:
        temporal, spatial = (int(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected T,S (e.g. 1,3), got {text!r}") from None
    return temporal, spatial


def add_config_arguments(parser: argparse.ArgumentParser, overrides_help: str = "key=value overrides") -> None:
    """``--config A.yaml [B.yaml ...]`` and the positional ``key=value`` overrides; parse with
    :func:`parse_config_args`."""
    parser.add_argument("--config", nargs="+", action="extend", metavar="YAML",
                        help="YAML file(s) over the typed defaults (video_st/config.py), merged left to right, e.g. "
                             "configs/datasets/k400.yaml configs/methods/sparse_tuning.yaml")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help=overrides_help)
    parser.add_argument("-v", "--verbose", action="store_true", help="a traceback with every error line")


def parse_config_args(parser: argparse.ArgumentParser, argv: Sequence[str] | None = None) -> argparse.Namespace:
    """``parser.parse_intermixed_args`` (options and overrides in any order), then the ``key=value`` items that
    ``--config`` swallowed moved to ``overrides``: ``nargs="+"`` is greedy, so in ``--config a.yaml b.yaml
    optim.lr=5e-4`` argparse hands ``optim.lr=5e-4`` to ``--config``. A config path never contains ``=``. The
    overrides keep their command-line order (a later one wins)."""
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parser.parse_intermixed_args(argv)
    given = args.config or []
    swallowed = [item for item in given if "=" in item]
    if swallowed:
        args.config = [item for item in given if "=" not in item]
        if not args.config:
            parser.error("--config: no YAML file given (key=value items are overrides)")
        args.overrides = _command_line_order([*args.overrides, *swallowed], argv)
    return args


def _command_line_order(items: list[str], argv: list[str]) -> list[str]:
    pending, ordered = Counter(items), []
    for token in argv:
        if pending[token] > 0:
            ordered.append(token)
            pending[token] -= 1
    return ordered + list(pending.elements())
