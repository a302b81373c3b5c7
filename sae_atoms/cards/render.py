"""Atom cards as static HTML: inline CSS, inline SVG and a few lines of inline script (the index's
column sort); no network, no server. Every text from data goes through ``html.escape``."""

from __future__ import annotations

import html
from typing import Any, Sequence

E = html.escape
STYLE = (
    "body{font-family:system-ui,sans-serif;max-width:1100px;margin:1.5em auto;color:#222;line-height:1.4}"
    ".atom-card section{margin:1.2em 0}.atom-card h2{font-size:1.15em;border-bottom:1px solid #ddd}"
    "table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:3px 7px;text-align:right}"
    "th{background:#f1f1f1;cursor:pointer}td:first-child,th:first-child{text-align:left}"
    ".ctx{font-family:ui-monospace,monospace;white-space:pre-wrap;margin:3px 0;padding:3px;border-left:3px solid #ccc}"
    ".tok{border-radius:2px}.tok.at{outline:1.5px solid #a40}.ok{color:#070}.bad{color:#b00}"
    ".cols{display:flex;gap:2em;flex-wrap:wrap}.muted{color:#777}"
    "code,.tok{unicode-bidi:isolate}"  # a right-to-left token must not reorder the text around it
)
SORT_SCRIPT = (
    "document.querySelectorAll('th[data-col]').forEach(function(th){th.onclick=function(){"
    "var t=th.closest('table'),b=t.tBodies[0],i=th.cellIndex,d=th.dataset.dir==='desc'?1:-1;th.dataset.dir=d>0?'asc':'desc';"
    "Array.from(b.rows).sort(function(x,y){var a=parseFloat(x.cells[i].dataset.v),c=parseFloat(y.cells[i].dataset.v);"
    "a=isNaN(a)?-1e300:a;c=isNaN(c)?-1e300:c;return d*(a-c);}).forEach(function(r){b.appendChild(r);});};});"
)


def num(v: Any, digits: int = 3) -> str:
    """A number as short text (``-`` for None)."""
    if v is None:
        return "-"
    return f"{v:.{digits}g}" if isinstance(v, float) else str(v)


def page(title: str, body: str, script: str = "") -> str:
    """A standalone HTML page."""
    tail = f"<script>{script}</script>" if script else ""
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>{E(title)}</title><style>{STYLE}</style>"
            f"</head><body>{body}{tail}</body></html>")


def fragment(body: str) -> str:
    """HTML to embed in a notebook cell: the body with its style."""
    return f"<div><style>{STYLE}</style>{body}</div>"


# --------------------------------------------------------------------------- the index
INDEX_COLUMNS = (("firing_rate", "firing rate"), ("mean", "mean code"), ("max", "max code"),
                 ("purity", "label purity"), ("coherence", "coherence (max |cos|)"))


def _index_row(r: dict[str, Any], carded: bool) -> str:
    u = r["unit"]
    name = f"<a href='unit_{u}.html'>{u}</a>" if carded else str(u)
    cells = "".join(f"<td data-v='{'nan' if r[k] is None else r[k]}'>{num(r[k])}</td>" for k, _ in INDEX_COLUMNS)
    return f"<tr class='unit-row'><td data-v='{u}'>{name}</td>{cells}</tr>"


def index_html(meta: dict[str, Any], rows: Sequence[dict[str, Any]], carded: set[int]) -> str:
    """The index: every unit with its stats, most frequently firing first, sortable by any column
    (click its header); units with a card link to it."""
    rows = sorted(rows, key=lambda r: -r["firing_rate"])
    head = "".join(f"<th data-col='{k}'>{E(t)}</th>" for k, t in (("unit", "unit"), *INDEX_COLUMNS))
    body = "".join(_index_row(r, r["unit"] in carded) for r in rows)
    intro = (f"<h1>{E(meta['name'])}: {meta['n_units']} units</h1><p>Hook <code>{E(meta['hook'])}</code>, "
             f"{meta['n_observed']} observed tokens ({E(meta['source'])}); coherence in the "
             f"{E(meta['geometry'])} geometry. {len(carded)} units have a card (linked). "
             "Click a column header to sort.</p>")
    table = f"<table id='units'><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"
    return page(f"{meta['name']}: atom cards", intro + table, SORT_SCRIPT)


# --------------------------------------------------------------------------- one card
def histogram_svg(counts: Sequence[int], lo: float, hi: float, width: int = 360, height: int = 120) -> str:
    """The histogram of a unit's non-zero codes as an inline SVG bar chart."""
    top = max(max(counts, default=0), 1)
    w = width / max(len(counts), 1)
    bars = "".join(f"<rect x='{i * w:.1f}' y='{height - 16 - c / top * (height - 20):.1f}' width='{w - 1:.1f}' "
                   f"height='{c / top * (height - 20):.1f}' fill='#d96'><title>{c}</title></rect>"
                   for i, c in enumerate(counts))
    labels = (f"<text x='0' y='{height - 2}' font-size='11'>{num(lo)}</text>"
              f"<text x='{width}' y='{height - 2}' font-size='11' text-anchor='end'>{num(hi)}</text>")
    return f"<svg class='hist' width='{width}' height='{height}' role='img'>{bars}{labels}</svg>"


def shaded(tokens: Sequence[str], acts: Sequence[float], at: int, vmax: float) -> str:
    """Tokens with a background whose opacity is the unit's code over ``vmax``; the context's own
    token outlined; the code in each token's tooltip."""
    spans = []
    for i, (t, a) in enumerate(zip(tokens, acts)):
        alpha = min(1.0, abs(a) / vmax) if vmax > 0 else 0.0
        cls = "tok at" if i == at else "tok"
        spans.append(f"<span class='{cls}' style='background:rgba(240,120,30,{alpha:.2f})' title='{a:.3g}'>{E(t)}</span>")
    return "".join(spans)


def _contexts_html(c: dict[str, Any]) -> str:
    vmax = max([x["value"] for x in c["contexts"]], default=0.0)
    items = "".join(f"<div class='ctx'>{shaded(x['tokens'], x['acts'], x['at'], vmax)} <span class='muted'>"
                    f"{num(x['value'])}; K={x['k']}, max|cos|={num(x['mu'])} {_ok(x['ok'])}</span></div>"
                    for x in c["contexts"])
    return _section("contexts", "Top-activating contexts", items or "<p>never fires on the observed tokens</p>",
                    f"<p class='muted'>From the {E(c['source'])}; K = units active on the token, bound "
                    f"max|cos| &lt; 1/(2K&minus;1) in the {E(c['geometry'])} geometry.</p>")


def _ok(ok: bool) -> str:
    return "<span class='ok'>meets the bound</span>" if ok else "<span class='bad'>breaks the bound</span>"


def _section(key: str, title: str, body: str, note: str = "") -> str:
    return f"<section class='{key}'><h2>{E(title)}</h2>{note}{body}</section>"


def _token_list(title: str, items: Sequence[tuple[str, float]]) -> str:
    lis = "".join(f"<li><code>{E(repr(t))}</code> {num(w)}</li>" for t, w in items)
    return f"<div><h3>{E(title)}</h3><ol>{lis}</ol></div>"


def _tables(c: dict[str, Any]) -> str:
    near = "".join(f"<div><h3>nearest by |cos| ({E(g)})</h3><ol>"
                   + "".join(f"<li><a href='unit_{j}.html'>{j}</a> {num(v)}</li>" for j, v in items) + "</ol></div>"
                   for g, items in c["nearest"].items())
    co = "".join(f"<tr><td>{x['unit']}</td><td>{x['count']}</td><td>{num(x['cos'])}</td><td>{num(x['k'])}</td>"
                 f"<td>{_ok(x['ok'])}</td></tr>" for x in c["cofiring"])
    cot = ("<table><thead><tr><th>unit</th><th>together</th><th>|cos|</th><th>mean K</th><th>pair vs 1/(2K&minus;1)</th>"
           f"</tr></thead><tbody>{co}</tbody></table>") if co else "<p>fires alone</p>"
    return (_section("neighbours", "Nearest units", f"<div class='cols'>{near}</div>")
            + _section("cofiring", "Fires most often with", cot))


def _labels_html(c: dict[str, Any]) -> str:
    if not c["labels"]:
        return ""
    rows = "".join(f"<tr><td>{E(col)}</td><td>{E(str(lab))}</td><td>{num(s)}</td></tr>" for col, (s, lab) in c["labels"].items())
    return _section("purity", "Label purity of the top samples",
                    f"<table><thead><tr><th>label</th><th>most common</th><th>share</th></tr></thead><tbody>{rows}</tbody></table>")


def _steering_html(c: dict[str, Any]) -> str:
    s = c["steering"]
    if s["value"] is None:
        return _section("steering", "Steering preview", "<p>no preview (the unit never fires)</p>")
    line = "; ".join(f"{E(repr(a))} &rarr; {E(repr(b))}" for a, b in s["pairs"])
    return _section("steering", "Steering preview",
                    f"<p class='steer'>clamped to {num(s['value'])} at the last token: {line}</p>")


def card_html(c: dict[str, Any]) -> str:
    """One unit's card (a ``div.atom-card``)."""
    head = (f"<h1>{E(c['name'])}: unit {c['unit']}</h1><p class='stats'>firing rate {num(c['firing_rate'])} "
            f"({c['n_fires']} tokens), mean code {num(c['mean'])}, max {num(c['max'])}, coherence "
            f"{num(c['coherence'])}, label purity {num(c['purity'])}. <a href='index.html'>all units</a></p>")
    hist = _section("histogram", "Non-zero codes", histogram_svg(**c["hist"]))
    logits = _section("logits", "Direct effect on the logits (decoder row through W_U)",
                      f"<div class='cols'>{_token_list('promoted', c['promoted'])}"
                      f"{_token_list('suppressed', c['suppressed'])}</div>")
    body = head + hist + _contexts_html(c) + logits + _labels_html(c) + _tables(c) + _steering_html(c)
    return f"<div class='atom-card' data-unit='{c['unit']}'>{body}</div>"


def overview_html(title: str, links: dict[str, str]) -> str:
    """A page linking several SAEs' card indexes (atoms and features side by side)."""
    items = "".join(f"<li><a href='{E(href)}'>{E(name)}</a></li>" for name, href in links.items())
    return page(title, f"<h1>{E(title)}</h1><ul>{items}</ul>")
