"""The HTML pages of ``flink-anonymizer risk --html`` and ``dp-report --html``.

One self-contained file each: inline CSS and SVG, no script, no font or image to
fetch (a Content-Security-Policy meta tag forbids it), readable at phone width. A
verdict and the headline figures come first, then labelled charts, then the raw
figures in a collapsed ``<details>``. Every figure of the summary carries a
``data-figure`` attribute and is formatted by the same functions the command prints
with, so the page says what the terminal says.

The pages show counts and shares, and published values only where the view publishes
them to everyone: a release level's example is its largest class, and only when that
class has the subjects the view requires.
"""

from __future__ import annotations

import html
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from flink_jobs.report.risk import DpReport, RiskReport, risk_bins

__all__ = ["dp_summary", "render_dp_html", "render_risk_html", "risk_summary"]

#: charts are drawn in this many SVG units across and scale to the page
WIDTH = 440
_PALETTE = ("#2f6db5", "#d9822b", "#3a9e5c", "#8e5cc2", "#c2474f", "#3b9fb0", "#8a7a2e", "#d45fa3")


# -- formatting shared with the command's output ------------------------------------


def share(x: float) -> str:
    """``0.0123`` -> ``1.23%``."""
    return f"{x:.2%}"


def risk(x: float) -> str:
    return f"{x:.3f}"


def ncp(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.3f}"


def count(n: float) -> str:
    return f"{n:,.0f}"


def eps(x: float | None) -> str:
    return "none" if x is None else f"{x:g}"


def level_label(name: str) -> str:
    return f"level {name}" if name.isdigit() else name


def describe_level(steps: Mapping[str, str], example: Mapping[str, Any] | None) -> str:
    """``age 20-39, zip 15***, location dp`` with an example, else ``age {range: 20}, ...``."""
    if example is not None:
        return ", ".join(f"{name} {_short(value)}" for name, value in example.items())
    return ", ".join(f"{name} {step}" for name, step in steps.items())


def _short(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value)


# -- summaries: (figure id, label, text) ----------------------------------------------


def risk_summary(report: RiskReport, sensitive: str | None = None) -> list[tuple[str, str, str]]:
    """The headline figures of a risk report, in page order."""
    req = report.requirement
    k_text = f"{report.k}" + (f" of {req.k} required" if req.k is not None else "")
    rows = [("k", "k achieved (distinct subjects in the smallest class)", k_text)]
    if report.l_value is not None or req.l_value is not None:
        l_text = f"{report.l_value if report.l_value is not None else 'not measured'}" + (
            f" of {req.l_value} required" if req.l_value is not None else "")
        rows.append(("l", f"l achieved ({sensitive or 'sensitive attribute'})", l_text))
    rows += [
        ("records", "published records", count(report.records)),
        ("classes", "equivalence classes", count(report.classes)),
        ("unique", "unique records (class of one subject)", share(report.unique_share)),
        ("risk_highest", "prosecutor risk, highest", risk(report.highest_risk)),
        ("risk_mean", "prosecutor risk, mean", risk(report.mean_risk)),
        ("at_risk", f"records above risk {report.threshold:g}",
         f"{count(report.at_risk_records)} ({share(report.at_risk_share)})"),
        ("suppressed", "suppressed records (not published)", count(report.suppressed)),
    ]
    rows += [(f"ncp_{name}", f"information loss (NCP) of {name}", ncp(value)) for name, value in report.ncp.items()]
    if report.ncp:
        rows.append(("ncp_overall", "information loss (NCP), mean over QIs", ncp(report.ncp_overall)))
    return rows


def dp_summary(report: DpReport) -> list[tuple[str, str, str]]:
    spent, total = report.epsilon_spent, report.total_epsilon
    return [
        ("releases", "releases", count(len(report.releases))),
        ("windows", "windows", count(len(report.windows))),
        ("groups", "groups" + (f" ({', '.join(report.group_by)})" if report.group_by else ""), count(len(report.groups))),
        ("epsilon", "epsilon per window", eps(report.epsilon)),
        ("delta", "delta per window", eps(report.delta)),
        ("epsilon_spent", "epsilon spent (basic composition)", eps(spent)),
        ("total_epsilon", "total_epsilon (budget)", eps(total) if total is not None else "not set: unbounded"),
        ("unreleased", "group-windows not released", count(report.unreleased)),
    ]


# -- the page --------------------------------------------------------------------------

_CSS = """
:root{--ok:#1d7a3a;--bad:#b3261e;--ink:#1f2328;--muted:#59636e;--line:#d0d7de;--bar:#2f6db5;--warn:#9a6700}
*{box-sizing:border-box}
body{font:15px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;color:var(--ink);margin:0;background:#fff}
main{max-width:880px;margin:0 auto;padding:16px}
h1{font-size:1.4em;margin:.2em 0}h2{font-size:1.1em;margin:1.6em 0 .2em}
p.sub,p.how{color:var(--muted);margin:.2em 0 .6em;font-size:.92em}
.verdict{border-radius:10px;padding:12px 16px;margin:12px 0;color:#fff;font-size:1.05em}
.verdict strong{font-size:1.5em;letter-spacing:.04em;margin-right:.5em}
.verdict.pass{background:var(--ok)}.verdict.fail{background:var(--bad)}.verdict.none{background:var(--warn)}
.verdict ul{margin:.3em 0 0 1.2em;padding:0}
dl.cards{display:grid;grid-template-columns:repeat(auto-fill,minmax(160px,1fr));gap:8px;margin:8px 0}
dl.cards div{border:1px solid var(--line);border-radius:8px;padding:8px 10px}
dl.cards dt{font-size:.8em;color:var(--muted)}dl.cards dd{margin:0;font-size:1.25em;font-weight:600}
dl.cards div.bad{border-color:var(--bad)}dl.cards div.bad dd{color:var(--bad)}
figure{margin:0 0 8px}figure svg{width:100%;max-width:600px;height:auto;display:block}
svg text{font-family:inherit;fill:var(--ink)}svg .muted{fill:var(--muted)}svg .axis{stroke:var(--line)}
.scroll{overflow-x:auto}table{border-collapse:collapse;font-size:.88em;min-width:100%}
th,td{border-bottom:1px solid var(--line);padding:4px 8px;text-align:left;white-space:nowrap}
td.n{text-align:right;font-variant-numeric:tabular-nums}
details{margin:18px 0;border:1px solid var(--line);border-radius:8px;padding:8px 12px}
summary{cursor:pointer;font-weight:600}pre{overflow-x:auto;font-size:.82em}
"""


def _page(title: str, subtitle: str, body: Sequence[str]) -> str:
    return (
        "<!doctype html>\n<html lang=en><head><meta charset=utf-8>"
        '<meta name=viewport content="width=device-width, initial-scale=1">'
        # nothing to fetch: a page that tried would show it in the browser console
        "<meta http-equiv=Content-Security-Policy content=\"default-src 'none'; style-src 'unsafe-inline'; img-src data:\">"
        '<link rel=icon href="data:,">'
        f"<title>{html.escape(title)}</title><style>{_CSS}</style></head><body><main>"
        f"<h1>{html.escape(title)}</h1><p class=sub>{html.escape(subtitle)}</p>"
        + "".join(body) + "</main></body></html>\n")


def _verdict(verdict: str | None, passed: str, failures: Sequence[str], none_text: str) -> str:
    if verdict is None:
        return f"<section class='verdict none' data-figure=verdict><strong>NO VERDICT</strong>{html.escape(none_text)}</section>"
    if verdict == "PASS":
        return f"<section class='verdict pass' data-figure=verdict><strong>PASS</strong>{html.escape(passed)}</section>"
    items = "".join(f"<li>{html.escape(f)}</li>" for f in failures)
    return f"<section class='verdict fail' data-figure=verdict><strong>FAIL</strong><ul>{items}</ul></section>"


def _cards(rows: Sequence[tuple[str, str, str]], bad: set[str] = frozenset()) -> str:
    cells = "".join(
        f"<div{' class=bad' if key in bad else ''}><dt>{html.escape(label)}</dt>"
        f"<dd data-figure='{html.escape(key)}'>{html.escape(text)}</dd></div>" for key, label, text in rows)
    return f"<dl class=cards>{cells}</dl>"


def _raw(figures: Mapping[str, Any]) -> str:
    return ("<details><summary>Raw figures (JSON)</summary>"
            f"<pre>{html.escape(json.dumps(figures, indent=2, default=str))}</pre></details>")


def render_risk_html(report: RiskReport, *, title: str = "Re-identification risk", source: str = "",
                     sensitive: str | None = None, level_count: int | None = None) -> str:
    """The risk page: verdict, headline figures, four charts, raw figures.

    ``level_count`` (from the policy's path) adds the release levels no record reached.
    """
    req = report.requirement
    passed = f"k {report.k} meets the {req.k} required" if req.k is not None else ""
    if req.l_value is not None:
        passed += ("; " if passed else "") + f"l {report.l_value} meets the {req.l_value} required"
    bad = set()
    if req.k is not None and report.k < req.k:
        bad.add("k")
    if req.l_value is not None and (report.l_value or 0) < req.l_value:
        bad.add("l")
    if report.unique_share > 0:
        bad.add("unique")
    if report.at_risk_records:
        bad.add("at_risk")
    body = [
        _verdict(report.verdict, passed, report.failures, "no k or l required: give --policy and --view, or --k"),
        _cards(risk_summary(report, sensitive), bad),
        _class_size_chart(report), _level_chart(report, level_count), _risk_chart(report), _ncp_chart(report),
        _raw(report.as_dict()),
    ]
    subtitle = f"{source}: " if source else ""
    subtitle += f"quasi-identifiers {', '.join(report.quasi_identifiers) or 'none'}; prosecutor model (ARX)"
    return _page(title, subtitle, body)


def _class_size_chart(report: RiskReport) -> str:
    k_req = report.requirement.k
    sizes = report.class_sizes
    if not sizes:
        return "<h2>Class sizes</h2><p>no published record</p>"
    top = max(sizes)
    single = max(10, 2 * (k_req or 0))
    bins: list[tuple[str, int, int]] = [(str(s), s, s) for s in range(1, min(top, single) + 1)]
    low = single + 1
    for high in (20, 50, 100, 200, 500, 1000, 10**18):
        if low > top:
            break
        if high >= low:
            bins.append((f"{low}-{high}" if high < 10**18 else f"{low}+", low, high))
            low = high + 1
    bars = []
    for label, lo, hi in bins:
        n = sum(c for s, c in sizes.items() if lo <= s <= hi)
        below = k_req is not None and hi < k_req
        bars.append(Bar(label, n, count(n), tone="bad" if below and n else "ok"))
    marker = None
    if k_req is not None and 1 < k_req <= min(top, single):
        marker = (k_req - 1, f"k = {k_req} required")
    return _chart_block("Class sizes", "How many classes hold each number of distinct subjects. "
                        "A class smaller than k (above the dashed line, in red) lets a recipient narrow a record down to fewer "
                        "than k people.",
                        hbar_chart(bars, title="Classes by size in distinct subjects", x_title="classes",
                                   y_title="subjects in the class", marker=marker))


def _level_chart(report: RiskReport, level_count: int | None) -> str:
    names = {name for name in report.levels} | {str(i) for i in range(level_count or 0)}
    bars = []
    total = report.records + report.suppressed
    for name in sorted(names, key=lambda n: (int(n) if n.isdigit() else 1 << 30, n)):
        n = report.levels.get(name, 0)
        detail = report.level_detail.get(name)
        note = describe_level(detail.steps, detail.example) if detail else "no record released at this level"
        pct = f" ({share(n / total)})" if total else ""
        bars.append(Bar(level_label(name), n, count(n) + pct, note=note, tone="ok" if n else "muted"))
    if report.suppressed:
        reasons = ", ".join(f"{why} {count(n)}" for why, n in sorted(report.suppressed_reasons.items()))
        bars.append(Bar("suppressed", report.suppressed, count(report.suppressed) + f" ({share(report.suppressed / total)})",
                        note=f"not published ({reasons})", tone="bad"))
    if not bars:
        return "<h2>Records by release level</h2><p>no record carries a k_level header</p>"
    return _chart_block("Records by release level", "Level 0 is the finest generalization; each level up is "
                        "coarser. Under each bar: the level's largest class, as published (or its generalization "
                        "steps when that class is too small to show).",
                        hbar_chart(bars, title="Records by release level", x_title="records",
                                   y_title="release level (k_level header)"))


def _risk_chart(report: RiskReport) -> str:
    n = report.records
    bars = [Bar(label, c, f"{count(c)} ({share(c / n)})" if n else "0",
                tone="bad" if top > report.threshold and c else "ok")
            for label, c, top in risk_bins(report.records_by_size)]
    # the line goes after the last bin whose risk is above the threshold
    above = [i for i, (_, _, top) in enumerate(risk_bins({})) if top > report.threshold]
    marker = (above[-1] + 1, f"threshold {report.threshold:g}") if above else None
    return _chart_block("Prosecutor risk", "A record's prosecutor risk is 1 / (distinct subjects in its class): "
                        "the chance that an attacker who knows a person is in the data picks out their record. Records above the "
                        "dashed threshold (in red) are at risk.",
                        hbar_chart(bars, title="Records by prosecutor risk", x_title="records",
                                   y_title="prosecutor risk", marker=marker))


def _ncp_chart(report: RiskReport) -> str:
    if not report.ncp:
        return ""
    bars = [Bar(name, value or 0.0, ncp(value), tone="ok" if value is not None else "muted")
            for name, value in report.ncp.items()]
    bars.append(Bar("mean", report.ncp_overall or 0.0, ncp(report.ncp_overall)))
    return _chart_block("Information loss", "Normalized certainty penalty per quasi-identifier: 0 is the exact "
                        "value, 1 tells nothing (a * or a suppressed record). A range or date is measured against the "
                        "policy's domain (else the published span), a map cell against the published area.",
                        hbar_chart(bars, title="Information loss by quasi-identifier", x_title="NCP (0 = exact, 1 = *)",
                                   y_title="quasi-identifier", x_max=1.0))


def _chart_block(heading: str, how: str, svg: str) -> str:
    return f"<h2>{html.escape(heading)}</h2><p class=how>{html.escape(how)}</p><figure>{svg}</figure>"


# -- charts ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Bar:
    """One row of a horizontal bar chart."""

    label: str
    value: float
    text: str  # printed at the end of the bar
    note: str = ""  # a second line under the bar
    tone: str = "ok"  # ok, bad or muted


_TONE = {"ok": "#2f6db5", "bad": "#b3261e", "muted": "#c7ced6"}


def _ticks(top: float) -> list[float]:
    """Round axis ticks from 0 to at least ``top``: 4-6 of them."""
    if top <= 0:
        return [0.0, 1.0]
    step = 10 ** math.floor(math.log10(top / 4))
    for factor in (1, 2, 2.5, 5, 10):
        if top / (step * factor) <= 5:
            step *= factor
            break
    return [i * step for i in range(math.ceil(top / step - 1e-9) + 1)]


def _tick_text(x: float) -> str:
    return f"{x:,.0f}" if x == int(x) and abs(x) >= 1 or x == 0 else f"{x:g}"


def _text(x: float, y: float, text: str, *, size: int = 12, anchor: str = "start", cls: str = "",
          extra: str = "") -> str:
    c = f" class={cls}" if cls else ""
    return (f'<text x="{x:.1f}" y="{y:.1f}" font-size="{size}" text-anchor="{anchor}"{c}{extra}>'
            f"{html.escape(text)}</text>")


def hbar_chart(bars: Sequence[Bar], *, title: str, x_title: str, y_title: str, x_max: float | None = None,
               marker: tuple[int, str] | None = None) -> str:
    """A horizontal bar chart, one even row per bar: label left, value at the bar's end, an axis with ticks.

    ``marker`` ``(i, text)`` draws a dashed line above row ``i`` (0 is the top row).
    """
    label_w = min(150, max(len(b.label) for b in bars) * 8 + 10)
    left, right = 26 + label_w, WIDTH - 96
    row = 46 if any(b.note for b in bars) else 28
    top = 28 if marker and marker[0] == 0 else 10
    ticks = _ticks(x_max if x_max is not None else max(b.value for b in bars))
    scale = (right - left) / ticks[-1]
    plot_h = row * len(bars)
    height = top + plot_h + 48
    out = [f'<svg viewBox="0 0 {WIDTH} {height}" role="img" aria-label="{html.escape(title)}" '
           'xmlns="http://www.w3.org/2000/svg">', f"<title>{html.escape(title)}</title>"]
    for t in ticks:
        x = left + t * scale
        out.append(f'<line x1="{x:.1f}" y1="{top}" x2="{x:.1f}" y2="{top + plot_h}" class=axis />')
        out.append(_text(x, top + plot_h + 16, _tick_text(t), size=12, anchor="middle", cls="muted"))
    for i, bar in enumerate(bars):
        y = top + i * row
        width = max(0.0, bar.value * scale)
        out.append(_text(left - 6, y + 19, bar.label, size=13, anchor="end"))
        out.append(f'<rect x="{left}" y="{y + 5}" width="{max(width, 1.5 if bar.value else 0):.1f}" height="19" '
                   f'fill="{_TONE[bar.tone]}"><title>{html.escape(bar.label)}: {html.escape(bar.text)}</title></rect>')
        if left + width + 5 + 7.5 * len(bar.text) > WIDTH:  # no room after the bar: the value goes inside its end
            out.append(_text(left + width - 5, y + 19, bar.text, size=13, anchor="end", extra=' style="fill:#fff"'))
        else:
            out.append(_text(left + width + 5, y + 19, bar.text, size=13))
        if bar.note:
            out.append(_text(left, y + 39, bar.note, size=12, cls="muted"))
    if marker is not None:
        y = top + marker[0] * row
        out.append(f'<line x1="{left - 20}" y1="{y:.1f}" x2="{WIDTH - 4}" y2="{y:.1f}" stroke="#b3261e" '
                   'stroke-width="1.5" stroke-dasharray="5 3" />')
        out.append(_text(WIDTH - 4, y - 4, marker[1], size=12, anchor="end",
                         extra=' style="fill:#b3261e"'))
    out.append(f'<line x1="{left}" y1="{top}" x2="{left}" y2="{top + plot_h}" stroke="#59636e" />')
    out.append(_text((left + right) / 2, height - 8, x_title, size=13, anchor="middle"))
    cy = top + plot_h / 2
    out.append(_text(13, cy, y_title, size=13, anchor="middle", extra=f' transform="rotate(-90 13 {cy:.1f})"'))
    out.append("</svg>")
    return "".join(out)


def series_chart(categories: Sequence[str], series: Sequence[tuple[str, Sequence[tuple[int, float, float | None,
                 float | None]]]], *, title: str, x_title: str, y_title: str, line: bool = False,
                 hline: tuple[float, str] | None = None, labels: bool = False) -> str:
    """Points over evenly spaced categories, with whiskers ``(lo, hi)`` where given; one colour per series.

    ``series`` is ``[(name, [(category index, value, low, high), ...]), ...]``; ``line`` joins
    each series' points, ``hline`` ``(y, text)`` draws a dashed limit, ``labels`` prints each value.
    """
    values = [v for _, pts in series for _, value, lo, hi in pts for v in (value, lo, hi) if v is not None]
    if hline is not None:
        values.append(hline[0])
    low, high = min([0.0, *values]), max([0.0, *values])
    ticks = _ticks(high - low) if low < 0 else _ticks(high)
    if low < 0:
        step = ticks[1] - ticks[0]
        start = math.floor(low / step) * step
        ticks = [start + i * step for i in range(int(round((max(high, start + step) - start) / step)) + 2)]
        ticks = [t for t in ticks if t <= high + step]
    y0, y1 = ticks[0], ticks[-1]
    legend_rows = math.ceil(len(series) / 3) if len(series) > 1 else 0
    widest = max(len(_tick_text(round(t, 10))) for t in ticks)
    left, right, top, plot_h = 30 + 7 * widest, WIDTH - 12, 12 + 18 * legend_rows, 200
    height = top + plot_h + 62
    slot = (right - left) / max(1, len(categories))

    def ypos(v: float) -> float:
        return top + plot_h - (v - y0) / ((y1 - y0) or 1) * plot_h

    out = [f'<svg viewBox="0 0 {WIDTH} {height}" role="img" aria-label="{html.escape(title)}" '
           'xmlns="http://www.w3.org/2000/svg">', f"<title>{html.escape(title)}</title>"]
    for t in ticks:
        out.append(f'<line x1="{left}" y1="{ypos(t):.1f}" x2="{right}" y2="{ypos(t):.1f}" class=axis />')
        out.append(_text(left - 5, ypos(t) + 4, _tick_text(round(t, 10)), size=12, anchor="end", cls="muted"))
    every = max(1, math.ceil(len(categories) / 8))
    for i, cat in enumerate(categories):
        if i % every == 0:
            out.append(_text(left + slot * (i + 0.5), top + plot_h + 17, cat, size=12, anchor="middle", cls="muted"))
    for s, (name, pts) in enumerate(series):
        color = _PALETTE[s % len(_PALETTE)]
        offset = (s - (len(series) - 1) / 2) * min(8.0, slot / (len(series) + 1))
        xy = [(left + slot * (i + 0.5) + offset, v, lo, hi) for i, v, lo, hi in pts]
        if line and len(xy) > 1:
            path = " ".join(f"{x:.1f},{ypos(v):.1f}" for x, v, _, _ in xy)
            out.append(f'<polyline points="{path}" fill="none" stroke="{color}" stroke-width="2" />')
        for x, v, lo, hi in xy:
            if lo is not None and hi is not None:
                out.append(f'<line x1="{x:.1f}" y1="{ypos(lo):.1f}" x2="{x:.1f}" y2="{ypos(hi):.1f}" '
                           f'stroke="{color}" stroke-width="1.5" />')
            tip = f"{name}: {v:g}" + (f" [{lo:g}, {hi:g}]" if lo is not None and hi is not None else "")
            out.append(f'<circle cx="{x:.1f}" cy="{ypos(v):.1f}" r="3.5" fill="{color}">'
                       f"<title>{html.escape(tip)}</title></circle>")
            if labels:
                out.append(_text(x, ypos(v) - 8, f"{v:g}", size=12, anchor="middle"))
        if legend_rows:
            lx, ly = 8 + (s % 3) * 140, 12 + 18 * (s // 3)
            out.append(f'<rect x="{lx}" y="{ly - 9}" width="10" height="10" fill="{color}" />')
            out.append(_text(lx + 14, ly, name, size=13))
    if hline is not None:
        out.append(f'<line x1="{left}" y1="{ypos(hline[0]):.1f}" x2="{right}" y2="{ypos(hline[0]):.1f}" '
                   'stroke="#b3261e" stroke-width="1.5" stroke-dasharray="5 3" />')
        out.append(_text(right, ypos(hline[0]) - 5, hline[1], size=12, anchor="end", extra=' style="fill:#b3261e"'))
    out.append(f'<line x1="{left}" y1="{top + plot_h}" x2="{right}" y2="{top + plot_h}" stroke="#59636e" />')
    out.append(_text((left + right) / 2, height - 10, x_title, size=13, anchor="middle"))
    cy = top + plot_h / 2
    out.append(_text(14, cy, y_title, size=13, anchor="middle", extra=f' transform="rotate(-90 14 {cy:.1f})"'))
    out.append("</svg>")
    return "".join(out)


# -- the DP page -----------------------------------------------------------------------------

#: the DP charts show at most this many windows, the latest
MAX_WINDOWS = 48


def _when(stamp: str, same_day: bool) -> str:
    text = stamp.replace("T", " ").rstrip("Z")
    text = text.split(".")[0]
    return text[11:16] if same_day and len(text) >= 16 else text[5:16]


def _group_name(group: Sequence[Any]) -> str:
    return " / ".join(_short(g) for g in group) or "all"


def render_dp_html(report: DpReport, *, title: str = "Differential privacy releases", source: str = "") -> str:
    """The DP page: budget verdict, headline figures, releases with their 95% interval, spend over time."""
    windows = report.windows[-MAX_WINDOWS:]
    days = {start[:10] for start, _ in windows}
    same_day = len(days) == 1
    cats = [_when(start, same_day) for start, _ in windows]
    index = {start: i for i, (start, _) in enumerate(windows)}
    x_title = "window start (UTC" + (f", {next(iter(days))})" if same_day and days else ")")
    shown = "" if len(report.windows) <= MAX_WINDOWS else f" The latest {MAX_WINDOWS} windows are shown."
    spent, total = report.epsilon_spent, report.total_epsilon
    passed = f"epsilon spent {eps(spent)} within total_epsilon {eps(total)}"
    body = [_verdict(report.verdict, passed, report.failures, "no total_epsilon is set, so the spend has no cap; "
                     "give --total-epsilon or set it in the policy"), _cards(dp_summary(report),
                                                                            {"unreleased"} if report.unreleased else set())]
    for metric in report.metrics:
        series = []
        for group in report.groups:
            pts = [(index[r.window_start], *r.metrics[metric][:1], *r.metrics[metric][2:]) for r in report.releases
                   if r.group == group and metric in r.metrics and r.window_start in index]
            if pts:
                series.append((_group_name(group), pts))
        body.append(_chart_block(
            f"{metric} per window", "Each dot is a release; its whisker, the 95% interval of the noise around it."
            + shown, series_chart(cats, series, title=f"{metric}, released with its 95% interval",
                                  x_title=x_title, y_title=metric)))
    spend = [(index[start], report.spent[end], None, None) for start, end in windows if end in report.spent]
    hline = (total, f"total_epsilon = {eps(total)}") if total is not None else None
    body.append(_chart_block(
        "Privacy budget", "Cumulative epsilon spent by the view after each window (basic composition, from the "
        "epsilon_spent header), against the policy's total_epsilon." + shown,
        series_chart(cats, [("epsilon spent", spend)], title="Epsilon spent over time", x_title=x_title,
                     y_title="epsilon spent", line=True, hline=hline, labels=len(spend) <= 16)))
    bars = [Bar(cat, report.missing.get(start, 0), count(report.missing.get(start, 0)),
                note="", tone="bad" if report.missing.get(start, 0) else "ok")
            for cat, (start, _) in zip(cats, windows, strict=True)]
    if bars:
        body.append(_chart_block(
            "Groups not released", "Per window, the groups released in another window (or listed public) that this "
            "window did not release: the noisy threshold suppressed them, the budget refused them, or they had no "
            "record. The view does not say which." + shown,
            hbar_chart(bars, title="Groups not released per window", x_title="groups not released",
                       y_title=x_title.split(" (")[0])))
    body.append(_release_table(report))
    figures = report.as_dict()
    figures.pop("release_list")
    body.append(_raw(figures))
    subtitle = (f"{source}: " if source else "") + f"{len(report.releases)} releases, grouped by " + (
        ", ".join(report.group_by) or "nothing")
    return _page(title, subtitle, body)


def _release_table(report: DpReport) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in
                   ("window start", "group", *(f"{m} [95% interval]" for m in report.metrics), "epsilon spent"))
    rows = []
    for r in report.releases:
        cells = [html.escape(r.window_start), html.escape(_group_name(r.group))]
        for m in report.metrics:
            if m in r.metrics:
                value, _, lo, hi = r.metrics[m]
                interval = f" [{lo:.4g}, {hi:.4g}]" if lo is not None and hi is not None else ""
                cells.append(f"{value:.4g}{interval}")
            else:
                cells.append("")
        cells.append(eps(r.epsilon_spent))
        rows.append("<tr>" + "".join(f"<td{' class=n' if i > 1 else ''}>{c}</td>" for i, c in enumerate(cells)) + "</tr>")
    return ("<details><summary>Every release, with its 95% interval</summary><div class=scroll><table>"
            f"<thead><tr>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table></div></details>")
