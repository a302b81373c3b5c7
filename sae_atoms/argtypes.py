"""argparse value types shared by the command line (``sae_atoms.cli``) and the experiments' parsers."""

from __future__ import annotations

import argparse
from typing import Callable


def int_at_least(low: int) -> Callable[[str], int]:
    """argparse type: an integer >= ``low``."""

    def parse(value: str) -> int:
        try:
            n = int(value)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{value!r} is not an integer") from None
        if n < low:
            raise argparse.ArgumentTypeError(f"{value} must be >= {low}")
        return n

    return parse


positive_int = int_at_least(1)  # argparse type: an integer >= 1
