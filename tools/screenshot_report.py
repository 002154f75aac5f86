"""Render an eval report and a run report into a scratch folder and screenshot them in headless Chromium.

    python tools/screenshot_report.py [--eval runs/tune-flow/eval] [--run runs/demo-flow/fnf] [--out docs]

The source folders are not touched: each is mirrored into a temporary folder (symlinks to its files and
subfolders), ``focusnfix report`` renders there, and Chromium (Playwright driving an installed Chromium,
``--chromium``) screenshots the page at 390, 1024 and 1400 px wide. Writes ``report-390.png``,
``report-1024.png``, ``report-1400.png`` (eval report, first ``--screens`` screens) and
``report-run-1024.png``; each PNG is cropped to ``--screens`` viewport heights and palette-quantized to
stay small.
"""
from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from focusnfix.report import render_report

WIDTHS = (390, 1024, 1400)


def mirror(src: Path, dst: Path) -> Path:
    """``dst`` with a symlink to every entry of ``src`` except an existing report.html."""
    dst.mkdir(parents=True)
    for entry in src.iterdir():
        if entry.name != "report.html":
            (dst / entry.name).symlink_to(entry.resolve(), target_is_directory=entry.is_dir())
    return dst


def shoot(page_path: Path, out: Path, width: int, screens: float, chromium: str) -> Path:
    """Screenshot ``page_path`` at ``width`` css px, cut at ``screens`` viewport heights, quantized PNG."""
    from PIL import Image
    from playwright.sync_api import sync_playwright

    height = 844 if width < 600 else 800
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium)
        page = browser.new_page(viewport={"width": width, "height": height})
        page.goto(page_path.resolve().as_uri(), wait_until="load")
        page.evaluate("document.querySelectorAll('img[loading=lazy]').forEach(i => i.loading = 'eager')")
        page.wait_for_timeout(300)
        overflow = page.evaluate("document.documentElement.scrollWidth - window.innerWidth")
        raw = out.with_suffix(".raw.png")
        page.screenshot(path=str(raw), full_page=True)
        browser.close()
    with Image.open(raw) as im:
        im = im.convert("RGB").crop((0, 0, im.width, min(im.height, int(height * screens))))
        im.quantize(colors=256, method=Image.Quantize.MEDIANCUT).save(out, optimize=True)
    raw.unlink()
    print(f"{out}: {width}px wide, horizontal overflow {overflow}px, {out.stat().st_size // 1024} KB")
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--eval", default="runs/tune-flow/eval", help="an eval folder")
    ap.add_argument("--run", default="runs/demo-flow/fnf", help="a training run folder")
    ap.add_argument("--out", default="docs", help="where the PNGs go")
    ap.add_argument("--screens", type=float, default=3.0, help="viewport heights kept per screenshot")
    ap.add_argument("--chromium", default="/usr/bin/chromium", help="the Chromium executable")
    args = ap.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="fnf-report-") as tmp:
        ev = render_report(mirror(Path(args.eval), Path(tmp) / "eval"))
        for w in WIDTHS:
            shoot(ev, out / f"report-{w}.png", w, args.screens, args.chromium)
        run = render_report(mirror(Path(args.run), Path(tmp) / "run"))
        shoot(run, out / "report-run-1024.png", 1024, args.screens, args.chromium)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
