"""Screenshot an HTML file (a run's report) with Debian's headless Chromium through Playwright.

    .venv/bin/python scripts/screenshot.py runs/demo/report.html docs/images/report.png \
        [--width 1100] [--height 1400] [--full-page]

Never downloads a browser: it drives `chromium` from the PATH. Requests to anything but the
file itself are counted and reported, so a report that reaches for a remote resource shows up.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("html", type=Path)
    parser.add_argument("png", type=Path)
    parser.add_argument("--width", type=int, default=1100)
    parser.add_argument("--height", type=int, default=1400)
    parser.add_argument("--full-page", action="store_true")
    args = parser.parse_args()
    from rlfm.feedback.browser import chromium_path, launch

    chromium = chromium_path()
    if chromium is None:
        sys.exit("screenshot: chromium is not on the PATH (apt-get install chromium)")
    from playwright.sync_api import sync_playwright

    remote: list[str] = []
    with sync_playwright() as p:
        browser = launch(p, chromium)
        page = browser.new_page(viewport={"width": args.width, "height": args.height})
        page.on(
            "request",
            lambda r: remote.append(r.url) if not r.url.startswith(("file:", "data:")) else None,
        )
        page.goto(args.html.resolve().as_uri())
        args.png.parent.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(args.png), full_page=args.full_page)
        browser.close()
    print(f"{args.png}: written; requests to other than the file itself: {len(remote)}")
    for url in remote:
        print(f"  {url}")


if __name__ == "__main__":
    main()
