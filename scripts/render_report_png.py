"""Render an HTML report to a full-page PNG with headless Chromium, to look at it as a reader would.

    .venv/bin/python scripts/render_report_png.py report.html [--out report.png] [--width 1280]

Chromium is not a Python dependency: on Debian/Ubuntu `apt-get install -y chromium` provides
/usr/bin/chromium (the tests that need it skip when it is absent). The page height is measured first
(Chromium's --screenshot captures only the window), so the PNG holds the whole page.
"""
from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome", "chrome")


def find_chromium() -> str | None:
    """Path of a Chromium/Chrome executable, or None."""
    for name in CHROMIUM_NAMES:
        path = shutil.which(name)
        if path:
            return path
    return None


def _chromium(binary: str, profile: str, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    cmd = [binary, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--mute-audio",
           "--no-first-run", f"--user-data-dir={profile}", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)


def page_height(binary: str, html: Path, width: int, profile: str) -> int:
    """The rendered page's scroll height in CSS px (dump the DOM after a script writes it in)."""
    probe = html.with_name(f".{html.stem}.probe.html")
    script = ("<script>window.addEventListener('load',()=>{document.title="
              "'HEIGHT='+document.documentElement.scrollHeight;});</script>")
    probe.write_text(html.read_text(encoding="utf-8").replace("</body>", script + "</body>"), encoding="utf-8")
    try:
        proc = _chromium(binary, profile, f"--window-size={width},1000", "--dump-dom", probe.resolve().as_uri())
    finally:
        probe.unlink(missing_ok=True)
    match = re.search(r"HEIGHT=(\d+)", proc.stdout)
    if not match:
        raise RuntimeError(f"could not measure the page height (chromium exit {proc.returncode}): {proc.stderr[-500:]}")
    return int(match.group(1))


def render(html: Path, out: Path, width: int = 1280, binary: str | None = None) -> Path:
    """Write a PNG screenshot of the whole page `html` to `out`."""
    binary = binary or find_chromium()
    if binary is None:
        raise FileNotFoundError("no chromium found: install it (apt-get install -y chromium)")
    with tempfile.TemporaryDirectory(prefix="mmlake-chromium-") as profile:
        height = page_height(binary, html, width, profile) + 20
        proc = _chromium(binary, profile, f"--window-size={width},{height}", f"--screenshot={out.resolve()}",
                         html.resolve().as_uri())
    if not out.exists():
        raise RuntimeError(f"chromium wrote no screenshot (exit {proc.returncode}): {proc.stderr[-500:]}")
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("html", type=Path, help="the report (python -m etl report --out FILE)")
    p.add_argument("--out", type=Path, help="PNG to write (default: next to the HTML)")
    p.add_argument("--width", type=int, default=1280, help="window width in px (default: 1280)")
    args = p.parse_args(argv)
    out = render(args.html, args.out or args.html.with_suffix(".png"), args.width)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
