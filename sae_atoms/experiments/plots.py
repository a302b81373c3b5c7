"""What the studies' plots share: one style per unit kind, one colour per method, and the Pareto front
of two scores."""

from __future__ import annotations

from typing import Any, Sequence

# one style per unit kind: hollow markers of decreasing size and distinct line styles, so series
# that coincide (e.g. tsae and jumprelu at the same R^2) stay visible on top of each other
STYLES = [(m, ls) for m, ls in zip("osD^vP*X", ("-", "--", "-.", ":", (0, (5, 1, 1, 1)), (0, (1, 2)), "-", "--"))]


def series(ax: Any, i: int, unit: str, pts: Sequence[tuple[float, float]]) -> None:
    """The ``i``-th unit kind's points on ``ax`` in its own hollow marker, size and line style."""
    marker, ls = STYLES[i % len(STYLES)]
    ax.plot([p[0] for p in pts], [p[1] for p in pts], marker=marker, ls=ls, ms=max(11 - 1.5 * i, 4),
            mfc="none", mew=1.5, label=unit)


def method_colors(names: Sequence[str]) -> dict[str, Any]:
    """One colour per name, the same in every plot of a study: matplotlib's ``tab10`` for up to 10
    names; beyond, ``tab20``'s ten dark colours first, then its ten light ones (the default colour
    cycle repeats after 10, and a steering study compares up to 16 methods). Repeats past 20."""
    import matplotlib

    if len(names) <= 10:
        cmap = matplotlib.colormaps["tab10"]
        return {n: cmap(i) for i, n in enumerate(names)}
    cmap = matplotlib.colormaps["tab20"]
    return {n: cmap((2 * i) % 20 + (i % 20) // 10) for i, n in enumerate(names)}


def pareto_front(points: Sequence[tuple[float, float]]) -> list[tuple[float, float]]:
    """The points no other point beats on both coordinates (higher is better on each), by the first."""
    pts = sorted(set(points), key=lambda p: (-p[0], -p[1]))
    front: list[tuple[float, float]] = []
    for p in pts:  # from the highest first coordinate down: kept when its second beats every kept one
        if not front or p[1] > front[-1][1]:
            front.append(p)
    return front[::-1]
