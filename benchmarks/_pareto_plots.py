"""pareto.py's PNG plots (PIL only: matplotlib is not a dependency): defect rate vs outside change or
alignment with each method's front, and proxy vs gold over training steps."""
from __future__ import annotations

import math
from pathlib import Path

from _pareto_runs import VARIANTS


# -- plots (PIL only: matplotlib is not a dependency) --------------------------------------------------
COLORS = {"draft": (200, 60, 40), "fnf": (40, 90, 200), "base": (20, 20, 20)}
SHADES = [(40, 90, 200), (0, 150, 150), (130, 60, 180), (60, 150, 60), (230, 140, 20), (120, 120, 120)]  # one per λ


def _ticks(lo: float, hi: float, n: int = 5) -> list[float]:
    span = (hi - lo) or 1.0
    raw = span / n
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw)
    first = math.ceil(lo / step) * step
    return [first + i * step for i in range(int((hi - first) / step + 1e-9) + 1)]


class Panel:
    """One x-y panel drawn into a PIL image inside ``box`` = (left, top, right, bottom)."""

    def __init__(self, draw, box, xlim, ylim, title, xlabel, ylabel):
        from PIL import ImageFont

        self.d, self.font, self.small = draw, ImageFont.load_default(size=13), ImageFont.load_default(size=10)
        left, top, right, bottom = box
        self.box = (left + 62, top + 26, right - 10, bottom - 42)
        self.xlim, self.ylim = _pad(xlim), _pad(ylim)
        x0, y0, x1, y1 = self.box
        draw.rectangle(self.box, outline=(0, 0, 0))
        for t in _ticks(*self.xlim):
            px = self.px(t, self.ylim[0])[0]
            draw.line([(px, y0), (px, y1)], fill=(232, 232, 232))
            draw.text((px, y1 + 4), f"{t:.4g}", fill=(0, 0, 0), font=self.small, anchor="ma")
        for t in _ticks(*self.ylim):
            py = self.px(self.xlim[0], t)[1]
            draw.line([(x0, py), (x1, py)], fill=(232, 232, 232))
            draw.text((x0 - 4, py), f"{t:.4g}", fill=(0, 0, 0), font=self.small, anchor="rm")
        draw.rectangle(self.box, outline=(0, 0, 0))
        draw.text(((x0 + x1) / 2, top + 6), title, fill=(0, 0, 0), font=self.font, anchor="ma")
        draw.text(((x0 + x1) / 2, y1 + 20), xlabel, fill=(0, 0, 0), font=self.font, anchor="ma")
        draw.text((left + 4, top + 6), ylabel, fill=(0, 0, 0), font=self.small, anchor="la")

    def px(self, x: float, y: float) -> tuple[float, float]:
        x0, y0, x1, y1 = self.box
        fx = (x - self.xlim[0]) / ((self.xlim[1] - self.xlim[0]) or 1)
        fy = (y - self.ylim[0]) / ((self.ylim[1] - self.ylim[0]) or 1)
        return x0 + fx * (x1 - x0), y1 - fy * (y1 - y0)

    def point(self, x, y, color, xerr=None, yerr=None, filled=True, r=4, text=None):
        cx, cy = self.px(x, y)
        if xerr is not None:  # 95 % interval bars
            self.d.line([self.px(xerr[0], y), self.px(xerr[1], y)], fill=color, width=1)
        if yerr is not None:
            self.d.line([self.px(x, yerr[0]), self.px(x, yerr[1])], fill=color, width=1)
        self.d.ellipse([cx - r, cy - r, cx + r, cy + r], outline=color, fill=color if filled else (255, 255, 255),
                       width=2)
        if text:
            self.d.text((cx + 6, cy - 6), text, fill=color, font=self.small, anchor="ls")

    def line(self, pts, color, width=2):
        if len(pts) > 1:
            self.d.line([self.px(x, y) for x, y in pts], fill=color, width=width)

    def legend(self, items, bottom: bool = False):
        x0, y0, x1, y1 = self.box
        for i, (text, color) in enumerate(items):
            y = (y1 - 8 - 16 * (len(items) - i)) if bottom else (y0 + 8 + 16 * i)
            self.d.rectangle([x1 - 170, y - 4, x1 - 160, y + 6], fill=color)
            self.d.text((x1 - 155, y + 1), text, fill=(0, 0, 0), font=self.small, anchor="lm")


def _pad(lim):
    lo, hi = lim
    if not (math.isfinite(lo) and math.isfinite(hi)):
        return 0.0, 1.0
    pad = (hi - lo) * 0.06 or max(abs(hi) * 0.1, 1e-3)
    return lo - pad, hi + pad


def _lim(points, k):
    vals = [v for p in points for v in (p[k], p.get(f"{k}_lo", p[k]), p.get(f"{k}_hi", p[k])) if math.isfinite(v)]
    return (min(vals), max(vals)) if vals else (0.0, 1.0)


def pareto_plot(points: list[dict], x: str, x_lower: bool, title: str, xlabel: str, path: Path) -> Path:
    """Defect rate (y) vs ``x``: every point with its 95 % CIs, each method's front as a line, base in black."""
    from PIL import Image, ImageDraw

    from focusnfix.evaluation.pareto import pareto_front

    img = Image.new("RGB", (760, 500), "white")
    panel = Panel(ImageDraw.Draw(img), (0, 0, 760, 500), _lim(points, x), _lim(points, "defect"), title, xlabel,
                  "defect rate (judge), lower is better")
    groups = {  # each with its own front: DRaFT, Focus-N-Fix with a fixed λ, with a budget, and any variants
        "DRaFT (filled: front; tag = steps)": (COLORS["draft"], [p for p in points if p["method"] == "draft"]),
        "Focus-N-Fix, fixed lam (filled: front)": (COLORS["fnf"], [p for p in points if p["method"] == "fnf"
                                                                   and not p.get("variant") and p["budget"] is None]),
        "Focus-N-Fix, budget (filled: front)": (SHADES[1], [p for p in points if p["method"] == "fnf"
                                                             and not p.get("variant") and p["budget"] is not None]),
        "variants (--variant; filled: front)": (SHADES[2], [p for p in points if p.get("variant")]),
    }
    for color, mine in groups.values():
        front = pareto_front(mine, x, "defect", x_lower=x_lower)
        panel.line([(p[x], p["defect"]) for p in front], color)
        for p in mine:
            on = p in front
            setting = (p["family"] if p.get("variant") else f"B {p['budget']:g}" if p.get("budget") is not None
                       else f"lam {p['lam']:g}")
            tag = (f"{p['steps']}" if p["method"] == "draft" and not p.get("variant") else f"{setting}/{p['steps']}")
            panel.point(p[x], p["defect"], color, (p[f"{x}_lo"], p[f"{x}_hi"]),
                        (p["defect_lo"], p["defect_hi"]), filled=on, text=tag if on else None)
    for p in points:
        if p["method"] == "base":
            panel.point(p[x], p["defect"], COLORS["base"], yerr=(p["defect_lo"], p["defect_hi"]), text="base")
    panel.legend([(name, color) for name, (color, mine) in groups.items() if mine]
                 + [("base model", COLORS["base"])])
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path)
    return path


def curves_plot(points: list[dict], title: str, path: Path) -> Path:
    """Proxy (training reward on the val images), gold (judge defect rate, oracle alignment) and the collateral rate
    (share of images with PSNR outside M(I0) below 35 dB) vs training steps."""
    from PIL import Image, ImageDraw

    base = next(p for p in points if p["method"] == "base")
    fams = sorted({p["family"] for p in points if p["method"] != "base"}, key=lambda f: (f != "draft", f))
    color = {f: COLORS["draft"] if f == "draft" else SHADES[i % len(SHADES)]
             for i, f in enumerate(f for f in fams if f != "draft")}
    color["draft"] = COLORS["draft"]
    img = Image.new("RGB", (1600, 430), "white")
    draw = ImageDraw.Draw(img)
    steps = (0, max(p["steps"] for p in points))
    for i, (k, name) in enumerate((("reward", "proxy: training reward (higher better)"),
                                   ("defect", "gold: defect rate (judge)"),
                                   ("alignment", "gold: alignment-oracle accuracy"),
                                   ("collateral", "collateral rate (PSNR outside M < 35 dB)"))):
        panel = Panel(draw, (400 * i, 0, 400 * (i + 1), 430), steps, _lim(points, k), f"{title}: {name}",
                      "training steps", "")
        for j, f in enumerate(fams):
            dodge = (j - (len(fams) - 1) / 2) * 0.012 * steps[1]  # side by side, so the interval bars stay readable
            series = [base] + sorted((p for p in points if p["family"] == f), key=lambda p: p["steps"])
            panel.line([(0 if p is base else p["steps"] + dodge, p[k]) for p in series], color[f])
            for p in series[1:]:
                panel.point(p["steps"] + dodge, p[k], color[f], yerr=(p[f"{k}_lo"], p[f"{k}_hi"]), r=3)
        panel.point(0, base[k], COLORS["base"], r=3)
        if i == 0:
            panel.legend([("DRaFT" if f == "draft" else family_label(f), color[f]) for f in fams],
                         bottom=True)
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path)
    return path


def family_label(fam: str) -> str:
    """``fnf-l0.2`` -> ``FnF lam=0.2``; ``fnf-b1`` -> ``FnF budget=1`` (grey levels)."""
    if fam in VARIANTS:
        return fam
    kind, value = fam[len("fnf-")], fam[len("fnf-") + 1:]
    return f"FnF lam={value}" if kind == "l" else f"FnF budget={value}"
