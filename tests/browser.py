"""Open a local page in headless Chromium (Debian's package; .ci/chromium.sh installs it in CI).

The flags keep Chromium off the network (this machine's is closed, as a clinical one often is) and out of the
user's profile. Without Chromium the tests skip, unless DSM5LAB_REQUIRE_CHROMIUM is set (CI): then they fail.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--virtual-time-budget=20000"]


def chromium() -> str:
    found = next((p for p in (shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome")) if p), None)
    if found is None:
        if os.environ.get("DSM5LAB_REQUIRE_CHROMIUM"):
            pytest.fail("DSM5LAB_REQUIRE_CHROMIUM is set but no chromium is on PATH (.ci/chromium.sh installs it)")
        pytest.skip("no chromium on PATH (apt-get install chromium)")
    return found


def _run(url: str, profile: Path, *extra: str) -> subprocess.CompletedProcess:
    cmd = [chromium(), *FLAGS, f"--user-data-dir={profile}", *extra, url]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=180, check=True)


def dump_dom_url(url: str, profile: Path) -> str:
    """The DOM after the page's scripts ran (within the virtual time budget)."""
    return _run(url, profile, "--dump-dom").stdout


def screenshot_url(url: str, png: Path, profile: Path, size: str = "1400,2600") -> Path:
    png.parent.mkdir(parents=True, exist_ok=True)
    _run(url, profile, f"--screenshot={png}", f"--window-size={size}")
    return png


def dump_dom(page: Path, profile: Path) -> str:
    return dump_dom_url(page.resolve().as_uri(), profile)


def screenshot(page: Path, png: Path, profile: Path, size: str = "1400,2600") -> Path:
    return screenshot_url(page.resolve().as_uri(), png, profile, size)


def rendered_divs(dom: str) -> dict[str, str]:
    """Each plot div's id and the outcome the page's vegaEmbed wrapper wrote on it (`yes` or the error)."""
    found = {}
    for tag in re.findall(r"<div[^>]*\bid=\"[^\"]+\"[^>]*>", dom):
        div_id = re.search(r'\bid="([^"]+)"', tag).group(1)
        state = re.search(r'\bdata-rendered="([^"]*)"', tag)
        if state or "vega-embed" in tag:
            found[div_id] = state.group(1) if state else "missing"
    return found
