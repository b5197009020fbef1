"""A screenshot of a `jungle report` page in headless Chromium (how docs/report.png is made).

python scripts/report_screenshot.py demo/report.html docs/report.png [--scroll-to cards]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402

from tests.browser import chromium  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("page", type=Path)
    parser.add_argument("png", type=Path)
    parser.add_argument("--width", type=int, default=1280)
    parser.add_argument("--height", type=int, default=1000)
    parser.add_argument("--scroll-to", default="", help="id of an element to scroll to")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as profile, chromium(Path(profile) / "p") as driver:
        driver.set_window_size(args.width, args.height)
        driver.get(args.page.absolute().as_uri())
        if args.scroll_to:
            driver.execute_script(
                "document.getElementById(arguments[0]).scrollIntoView()", args.scroll_to
            )
        WebDriverWait(driver, 20).until(  # the images in view have loaded
            lambda d: d.execute_script(
                "return [...document.images].filter(i => i.getBoundingClientRect().top < "
                "innerHeight).every(i => i.complete && i.naturalWidth > 0)"
            )
        )
        driver.save_screenshot(str(args.png))
    print(f"{args.png}: {args.width}x{args.height}")


if __name__ == "__main__":
    main()
