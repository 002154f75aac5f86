"""Inline SVG charts written by hand (no plotting library): line charts, scatter plots, an HTML legend.

Coordinates: a chart is ``width`` x ``height`` px with the plot area inside fixed margins; data are
mapped linearly. Non-finite values are dropped. Text goes through :func:`esc`.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from .page import esc, fmt

PALETTE = ["#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf", "#7f7f7f", "#bcbd22"]
_M = {"left": 62, "right": 14, "top": 26, "bottom": 42}


def color(k: int) -> str:
    """The k-th colour of the palette (cycled)."""
    return PALETTE[k % len(PALETTE)]


@dataclass
class Series:
    """One line: ``xs``/``ys`` of equal length."""
    name: str
    xs: Sequence[float]
    ys: Sequence[float]
    color: str


@dataclass
class Point:
    """One labelled point with optional error intervals (low, high) along x and y."""
    name: str
    x: float
    y: float
    color: str
    xerr: tuple[float, float] | None = None
    yerr: tuple[float, float] | None = None


def nice_ticks(lo: float, hi: float, n: int = 5) -> list[float]:
    """About ``n`` round tick values (1, 2, 5 x 10^k steps) covering [lo, hi]."""
    if not hi > lo:
        return [lo]
    raw = (hi - lo) / max(1, n)
    mag = 10 ** math.floor(math.log10(raw))
    step = next(s * mag for s in (1, 2, 5, 10) if s * mag >= raw)
    first = math.ceil(lo / step - 1e-9)
    count = min(50, int(math.floor(hi / step + 1e-9)) - first + 1)  # capped: float spacing may collapse
    ticks = [(first + k) * step for k in range(max(1, count))]
    return [0.0 if abs(v) < step * 1e-9 else v for v in ticks]


def _span(values: list[float], include_zero: bool = False, pad: float = 0.06) -> tuple[float, float]:
    """Data range with padding (a unit range around a single value)."""
    vals = values + ([0.0] if include_zero else [])
    lo, hi = min(vals), max(vals)
    if hi == lo:
        d = abs(lo) * 0.1 or 1.0
        return lo - d, hi + d
    d = (hi - lo) * pad
    return lo - d, hi + d


class _Frame:
    """Axes, ticks and labels of one chart; maps data to pixel coordinates."""

    def __init__(self, width: int, height: int, xr: tuple[float, float], yr: tuple[float, float]):
        self.w, self.h, self.xr, self.yr = width, height, xr, yr
        self.x0, self.x1 = _M["left"], width - _M["right"]
        self.y0, self.y1 = height - _M["bottom"], _M["top"]

    def px(self, x: float) -> float:
        return self.x0 + (x - self.xr[0]) / (self.xr[1] - self.xr[0]) * (self.x1 - self.x0)

    def py(self, y: float) -> float:
        return self.y0 - (y - self.yr[0]) / (self.yr[1] - self.yr[0]) * (self.y0 - self.y1)

    def axes(self, title: str, xlabel: str, ylabel: str) -> list[str]:
        out = [f"<rect x='{self.x0}' y='{self.y1}' width='{self.x1 - self.x0}' height='{self.y0 - self.y1}' "
               "fill='#fff' stroke='#bbb'/>"]
        for t in nice_ticks(*self.xr):
            x = self.px(t)
            out.append(f"<line x1='{x:.1f}' y1='{self.y1}' x2='{x:.1f}' y2='{self.y0}' stroke='#eee'/>")
            out.append(f"<text x='{x:.1f}' y='{self.y0 + 14}' text-anchor='middle'>{esc(fmt(t, 3))}</text>")
        for t in nice_ticks(*self.yr):
            y = self.py(t)
            out.append(f"<line x1='{self.x0}' y1='{y:.1f}' x2='{self.x1}' y2='{y:.1f}' stroke='#eee'/>")
            out.append(f"<text x='{self.x0 - 4}' y='{y + 3.5:.1f}' text-anchor='end'>{esc(fmt(t, 3))}</text>")
        cx, cy = (self.x0 + self.x1) / 2, (self.y0 + self.y1) / 2
        out.append(f"<text x='{cx:.1f}' y='16' text-anchor='middle' font-weight='600' font-size='12'>"
                   f"{esc(title)}</text>")
        out.append(f"<text x='{cx:.1f}' y='{self.h - 6}' text-anchor='middle'>{esc(xlabel)}</text>")
        out.append(f"<text transform='translate(13,{cy:.1f}) rotate(-90)' text-anchor='middle'>{esc(ylabel)}</text>")
        return out


def _svg(width: int, height: int, parts: list[str], label: str) -> str:
    return (f"<svg xmlns='http://www.w3.org/2000/svg' width='{width}' height='{height}' viewBox='0 0 {width} {height}' "
            f"font-family='sans-serif' font-size='10' role='img' aria-label='{esc(label)}'>{''.join(parts)}</svg>")


def _moving_average(ys: list[float], window: int) -> list[float]:
    """Trailing mean over ``window`` values (shorter at the start)."""
    out, acc = [], 0.0
    for k, y in enumerate(ys):
        acc += y
        if k >= window:
            acc -= ys[k - window]
        out.append(acc / min(k + 1, window))
    return out


def _polyline(frame: _Frame, xs: list[float], ys: list[float], stroke: str, width: float, opacity: float) -> str:
    pts = " ".join(f"{frame.px(x):.1f},{frame.py(y):.1f}" for x, y in zip(xs, ys))
    return f"<polyline points='{pts}' fill='none' stroke='{stroke}' stroke-width='{width}' stroke-opacity='{opacity}'/>"


def line_chart(series: Sequence[Series], title: str, xlabel: str = "step", ylabel: str = "",
               width: int = 440, height: int = 260, smooth: bool = True) -> str:
    """Lines per series plus a legend; with ``smooth`` and > 30 points, raw values are drawn faint
    under a trailing moving average (window = n / 15)."""
    clean = []
    for s in series:
        pairs = [(float(x), float(y)) for x, y in zip(s.xs, s.ys)
                 if x is not None and y is not None and math.isfinite(float(x)) and math.isfinite(float(y))]
        if pairs:
            clean.append((s, [p[0] for p in pairs], [p[1] for p in pairs]))
    legend_w = 120 if len(clean) > 1 or (clean and clean[0][0].name) else 0
    total_w = width + legend_w
    if not clean:
        return _svg(total_w, 60, [f"<text x='10' y='30'>{esc(title)}: no data</text>"], title)
    frame = _Frame(width, height, _span([x for _, xs, _ in clean for x in xs]),
                   _span([y for _, _, ys in clean for y in ys]))
    parts = frame.axes(title, xlabel, ylabel)
    for k, (s, xs, ys) in enumerate(clean):
        if smooth and len(ys) > 30:
            parts.append(_polyline(frame, xs, ys, s.color, 1.0, 0.25))
            parts.append(_polyline(frame, xs, _moving_average(ys, max(2, len(ys) // 15)), s.color, 2.0, 1.0))
        elif len(xs) == 1:
            parts.append(f"<circle cx='{frame.px(xs[0]):.1f}' cy='{frame.py(ys[0]):.1f}' r='3' fill='{s.color}'/>")
        else:
            parts.append(_polyline(frame, xs, ys, s.color, 1.6, 1.0))
        if legend_w:
            ly = _M["top"] + 8 + 16 * k
            parts.append(f"<line x1='{width + 4}' y1='{ly}' x2='{width + 22}' y2='{ly}' stroke='{s.color}' "
                         "stroke-width='2.5'/>")
            parts.append(f"<text x='{width + 26}' y='{ly + 3.5}'>{esc(s.name)}</text>")
    return _svg(total_w, height, parts, title)


MAX_POINT_LABELS = 3  # more points than this: their names crowd each other, so only the legend names them


def legend(items: Sequence[tuple[str, str]]) -> str:
    """An HTML legend (name, colour) that wraps with the page, for charts that share colours."""
    spans = "".join(f"<span><span class='sw' style='background:{esc(c)}'></span>{esc(name)}</span>"
                    for name, c in items)
    return f"<div class='legend'>{spans}</div>"


def scatter_chart(points: Sequence[Point], title: str, xlabel: str, ylabel: str,
                  width: int = 440, height: int = 320, origin_label: str | None = None,
                  point_labels: bool | None = None) -> str:
    """Points with error bars; dashed lines through x = 0 and y = 0 (the reference). Points carry their
    names as text when ``point_labels`` (default: at most MAX_POINT_LABELS points); pair the chart with
    :func:`legend` otherwise. Every point has a hover title either way."""
    pts = [p for p in points if p.x is not None and p.y is not None and math.isfinite(p.x) and math.isfinite(p.y)]
    if not pts:
        return _svg(width, 60, [f"<text x='10' y='30'>{esc(title)}: no data</text>"], title)
    xs = [p.x for p in pts] + [v for p in pts if p.xerr for v in p.xerr if math.isfinite(v)]
    ys = [p.y for p in pts] + [v for p in pts if p.yerr for v in p.yerr if math.isfinite(v)]
    if point_labels is None:
        point_labels = len(pts) <= MAX_POINT_LABELS
    frame = _Frame(width, height, _span(xs, True, 0.12), _span(ys, True, 0.1))
    parts = frame.axes(title, xlabel, ylabel)
    zx, zy = frame.px(0.0), frame.py(0.0)
    parts.append(f"<line x1='{zx:.1f}' y1='{frame.y1}' x2='{zx:.1f}' y2='{frame.y0}' stroke='#888' "
                 "stroke-dasharray='4 3'/>")
    parts.append(f"<line x1='{frame.x0}' y1='{zy:.1f}' x2='{frame.x1}' y2='{zy:.1f}' stroke='#888' "
                 "stroke-dasharray='4 3'/>")
    if origin_label:
        parts.append(f"<circle cx='{zx:.1f}' cy='{zy:.1f}' r='3.5' fill='#fff' stroke='#333'/>")
        parts.append(f"<text x='{zx + 6:.1f}' y='{zy + 13:.1f}' fill='#333'>{esc(origin_label)}</text>")
    for p in pts:
        cx, cy = frame.px(p.x), frame.py(p.y)
        if p.xerr and all(math.isfinite(v) for v in p.xerr):
            a, b = frame.px(p.xerr[0]), frame.px(p.xerr[1])
            parts.append(f"<path d='M{a:.1f},{cy:.1f}H{b:.1f}M{a:.1f},{cy - 3:.1f}V{cy + 3:.1f}"
                         f"M{b:.1f},{cy - 3:.1f}V{cy + 3:.1f}' stroke='{p.color}' fill='none'/>")
        if p.yerr and all(math.isfinite(v) for v in p.yerr):
            a, b = frame.py(p.yerr[0]), frame.py(p.yerr[1])
            parts.append(f"<path d='M{cx:.1f},{a:.1f}V{b:.1f}M{cx - 3:.1f},{a:.1f}H{cx + 3:.1f}"
                         f"M{cx - 3:.1f},{b:.1f}H{cx + 3:.1f}' stroke='{p.color}' fill='none'/>")
        parts.append(f"<circle cx='{cx:.1f}' cy='{cy:.1f}' r='4.5' fill='{p.color}'><title>{esc(p.name)}: "
                     f"x {esc(fmt(p.x, 4, True))}, y {esc(fmt(p.y, 4, True))}</title></circle>")
        if point_labels:
            parts.append(f"<text x='{cx + 7:.1f}' y='{cy - 6:.1f}' fill='{p.color}' font-weight='600'>"
                         f"{esc(p.name)}</text>")
    return _svg(width, height, parts, title)
