"""argparse value types shared by the command line (``sae_atoms.cli``) and the experiments' parsers."""

from __future__ import annotations

import argparse
import math
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


def _value(text: str) -> bool | int | float | str | None:
    """A config value from the command line: None, True / False, an int, a float, else the text itself."""
    if text in ("None", "True", "False"):
        return {"None": None, "True": True, "False": False}[text]
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def named_fields(value: str) -> tuple[str, tuple[tuple[str, bool | int | float | str | None], ...]]:
    """argparse type: ``NAME=FIELD:VALUE[,FIELD:VALUE...]`` -> ``(NAME, ((FIELD, VALUE), ...))``,
    e.g. ``alpha0.6=aip_alpha:0.6`` (a config variant with a name of its own)."""
    name, sep, spec = value.partition("=")
    pairs = [p.partition(":") for p in spec.split(",")] if spec else []
    if not sep or not name or not pairs or any(not k or not s or not v for k, s, v in pairs):
        raise argparse.ArgumentTypeError(f"{value!r}: write NAME=FIELD:VALUE[,FIELD:VALUE...], e.g. alpha0.6=aip_alpha:0.6")
    return name, tuple((k, _value(v)) for k, _, v in pairs)


def unit_lr(value: str) -> tuple[str, float]:
    """argparse type: ``UNIT=LR`` -> ``(UNIT, LR)`` with a positive learning rate, e.g. ``features_topk=3e-3``."""
    unit, sep, lr = value.partition("=")
    try:
        rate = float(lr)
    except ValueError:
        rate = float("nan")
    if not sep or not unit or not (math.isfinite(rate) and rate > 0):
        raise argparse.ArgumentTypeError(f"{value!r}: write UNIT=LR with a positive learning rate, e.g. features_topk=3e-3")
    return unit, rate
