"""Screenshot the eval report's "keeps the rest" evidence and the rating page with its problem text.

    python tools/screenshot_keeps_rest.py --eval runs/demo/eval [--out docs]

The eval folder is copied into a temporary folder (the source is not touched). There ``focusnfix report``
renders the page, and headless Chromium (Playwright driving an installed Chromium, ``--chromium``) shoots, at
1400 px, the top of it from "At a glance" to the end of "Where the methods differ outside the mask":
``report-keeps-the-rest.png``. Then ``focusnfix rate COPY --only-problems --per-rater 20`` serves the copy on a
free loopback port, a rater starts, and the first task page is shot at 1280 x 800: ``rating-problem.png``.
PNGs are palette-quantized to stay small.
"""
from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from focusnfix.report import render_report

ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-proxy-server"]


def _save(raw: Path, out: Path) -> None:
    from PIL import Image

    with Image.open(raw) as im:
        im.convert("RGB").quantize(colors=256, method=Image.Quantize.MEDIANCUT).save(out, optimize=True)
    raw.unlink()
    print(f"{out}: {out.stat().st_size // 1024} KB")


def shoot_report(folder: Path, out: Path, chromium: str) -> None:
    from playwright.sync_api import sync_playwright

    page_path = render_report(folder)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=ARGS)
        page = browser.new_page(viewport={"width": 1400, "height": 900})
        page.goto(page_path.resolve().as_uri(), wait_until="load")
        page.evaluate("document.querySelectorAll('img[loading=lazy]').forEach(i => i.loading = 'eager')")
        page.wait_for_timeout(500)
        last = "#differ" if page.query_selector("#differ") else "#preview"
        top = page.evaluate("document.querySelector('#headline').getBoundingClientRect().top + scrollY")
        bottom = page.evaluate(f"document.querySelector('{last}').getBoundingClientRect().bottom + scrollY")
        raw = out.with_suffix(".raw.png")
        page.screenshot(path=str(raw), full_page=True,
                        clip={"x": 0, "y": max(0, top - 8), "width": 1400, "height": bottom - top + 16})
        browser.close()
    _save(raw, out)


def shoot_rating(folder: Path, out: Path, chromium: str, extra: list[str]) -> None:
    from playwright.sync_api import sync_playwright

    server = subprocess.Popen([sys.executable, "-m", "focusnfix", "rate", str(folder), "--port", "0",
                               "--db", str(folder.parent / "ratings.sqlite"), *extra],
                              stdout=subprocess.PIPE, text=True)
    try:
        line = server.stdout.readline()
        print(line.strip())
        url = re.search(r"http://127\.0\.0\.1:\d+/", line).group(0)
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=chromium, args=ARGS)
            page = browser.new_page(viewport={"width": 1280, "height": 800})
            page.goto(url)
            page.fill("#name", "Ada")
            page.click("button[type=submit]")
            page.wait_for_selector("#answer")
            page.wait_for_timeout(300)
            raw = out.with_suffix(".raw.png")
            page.screenshot(path=str(raw))
            browser.close()
        _save(raw, out)
    finally:
        server.terminate()
        server.wait(timeout=30)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--eval", required=True, help="an eval folder with a Focus-N-Fix and a DRaFT method")
    ap.add_argument("--out", default="docs", help="where the PNGs go")
    ap.add_argument("--chromium", default="/usr/bin/chromium", help="the Chromium executable")
    ap.add_argument("--rate-args", nargs=argparse.REMAINDER, default=["--only-problems", "--per-rater", "20"],
                    help="options for `focusnfix rate` (default: --only-problems --per-rater 20); last")
    args = ap.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="fnf-keeps-rest-") as tmp:
        copy = Path(tmp) / "eval"
        shutil.copytree(args.eval, copy, ignore=shutil.ignore_patterns("report.html", "report-diffs", "*.sqlite*",
                                                                       ".rating-*.lock"))
        shoot_report(copy, out / "report-keeps-the-rest.png", args.chromium)
        shoot_rating(copy, out / "rating-problem.png", args.chromium, args.rate_args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
