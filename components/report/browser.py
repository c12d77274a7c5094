"""Checking the report the way a reader sees it: in a real headless Chromium when one is installed.

:func:`check_in_browser` opens a copy of the page with a small probe script prepended (it records errors and,
after load, every image's natural size and the page height into the DOM), reads the DOM back with
``--dump-dom``, collects console messages from Chromium's log, and takes a full-page screenshot.
:func:`decode_images` is the fallback without a browser: every embedded PNG decoded with Pillow.
"""

from __future__ import annotations

import base64
import io
import json
import re
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any

CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--hide-scrollbars", "--enable-logging=stderr", "--v=0"]
WIDTH = 1280
MAX_HEIGHT = 30000

PROBE = """<script>
window.__probeErrors = [];
window.addEventListener('error', function (e) {
  var t = e.target && e.target.tagName ? e.target.tagName + ' ' + String(e.target.src || '').slice(0, 40) : '';
  window.__probeErrors.push(String(e.message || t || 'error'));
}, true);
window.addEventListener('load', function () {
  var imgs = Array.prototype.map.call(document.images, function (i) {
    return {alt: i.alt, w: i.naturalWidth, h: i.naturalHeight, shown: i.width, complete: i.complete};
  });
  var pre = document.createElement('pre');
  pre.id = '__probe';
  pre.textContent = JSON.stringify({images: imgs, errors: window.__probeErrors,
                                    height: document.documentElement.scrollHeight});
  document.body.appendChild(pre);
});
</script>"""


def chromium() -> str | None:
    """The Chromium executable, or None."""
    for name in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path:
            return path
    return None


def _run(args: list[str], timeout: float) -> subprocess.CompletedProcess:
    with tempfile.TemporaryDirectory(prefix="homefeed-chromium-") as profile:
        return subprocess.run([chromium() or "chromium", *CHROMIUM_FLAGS, f"--user-data-dir={profile}", *args],
                              capture_output=True, text=True, timeout=timeout, start_new_session=True)


def check_in_browser(html_path: str | Path, screenshot: str | Path | None = None,
                     timeout: float = 120) -> dict[str, Any]:
    """Open ``html_path`` in headless Chromium: ``{"images": [{alt, w, h, shown, complete}], "errors": [...],
    "height": px}``; errors hold the page's error events and every console message. With ``screenshot``, a
    full-page PNG is written there."""
    html_path = Path(html_path).resolve()
    page = html_path.read_text()
    with tempfile.TemporaryDirectory(prefix="homefeed-probe-") as tmp:
        probe = Path(tmp) / html_path.name
        probe.write_text(page.replace("<head>", "<head>" + PROBE, 1) if "<head>" in page else PROBE + page)
        proc = _run(["--virtual-time-budget=20000", "--dump-dom", probe.as_uri()], timeout)
    m = re.search(r"<pre id=\"__probe\">(.*?)</pre>", proc.stdout, re.S)
    if not m:
        raise RuntimeError(f"chromium did not load {html_path} (exit {proc.returncode}): {proc.stderr[-2000:]}")
    result = json.loads(m.group(1).replace("&quot;", '"').replace("&lt;", "<").replace("&gt;", ">")
                        .replace("&amp;", "&"))
    result["errors"] += [line for line in proc.stderr.splitlines() if ":CONSOLE" in line]
    if screenshot is not None:
        shot = Path(screenshot).resolve()
        shot.parent.mkdir(parents=True, exist_ok=True)
        height = min(MAX_HEIGHT, int(result.get("height") or 2000) + 20)
        proc = _run([f"--window-size={WIDTH},{height}", f"--screenshot={shot}", html_path.as_uri()], timeout)
        if not shot.exists():
            raise RuntimeError(f"chromium wrote no screenshot {shot} (exit {proc.returncode}): {proc.stderr[-2000:]}")
    return result


def decode_images(page: str) -> list[tuple[int, int]]:
    """(width, height) of every embedded PNG of the page, each decoded with Pillow (raises if one is broken)."""
    from PIL import Image  # Pillow comes with matplotlib

    sizes = []
    for b64 in re.findall(r"src='data:image/png;base64,([A-Za-z0-9+/=]+)'", page):
        with Image.open(io.BytesIO(base64.b64decode(b64))) as im:
            im.load()
            sizes.append(im.size)
    return sizes
