"""The argument parser that every script builds from its argument dataclasses."""

import argparse
from collections.abc import Iterable

from transformers import HfArgumentParser


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Append "(default: X)" to an option's help unless the help states its default itself.

    A help text that contains "Default:" explains the default in words ("Default: tab.",
    "Default: on; --no_bm25 turns it off."), so the raw value (an invisible tab, an empty string,
    or the False that HfArgumentParser shows for a `--no_X` flag) would only repeat or contradict it.
    """

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if action.help and "Default:" in action.help:
            return action.help
        return super()._get_help_string(action)


def build_argument_parser(dataclass_types: Iterable[type]) -> HfArgumentParser:
    """Return an HfArgumentParser over `dataclass_types` whose --help shows each default once."""
    return HfArgumentParser(list(dataclass_types), formatter_class=HelpFormatter)
