"""One plain-text / Markdown table of result rows, for every printed summary."""

from __future__ import annotations

from typing import Any, Iterable, Mapping, Sequence

TABLE_KEYS = ("r2", "r2_aip", "l0_mean", "mu", "mu_raw", "q_star_a", "q_star_b", "monosemanticity", "dead_frac")


def _cell(v: Any, digits: int, missing: str) -> str:
    return missing if v is None else (f"{v:.{digits}f}" if isinstance(v, float) else str(v))


def format_table(results: Mapping[str, Mapping[str, Any]] | Iterable[tuple[str, Mapping[str, Any]]],
                 keys: Sequence[str] = TABLE_KEYS, *, label: str = "units", digits: int = 4, missing: str = "-",
                 markdown: bool = False) -> str:
    """One row per result, one column per key (after a first column ``label``).

    ``results``: ``{row label: result dict}``, or ``(row label, result dict)`` pairs when labels
    repeat. Floats print with ``digits`` decimals, absent or None values as ``missing``. Plain
    text right-aligns the columns; ``markdown=True`` writes a Markdown table.
    """
    items = results.items() if isinstance(results, Mapping) else results
    head = [label, *keys]
    lines = [[str(name)] + [_cell(r.get(k), digits, missing) for k in keys] for name, r in items]
    if markdown:
        return ("| " + " | ".join(head) + " |\n|" + "---|" * len(head) + "\n"
                + "\n".join("| " + " | ".join(line) + " |" for line in lines))
    lines.insert(0, head)
    widths = [max(len(line[c]) for line in lines) for c in range(len(head))]
    return "\n".join("  ".join(c.rjust(w) for c, w in zip(line, widths)) for line in lines)
