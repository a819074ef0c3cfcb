"""A real browser for the live page's tests: Debian's headless Chromium, installed by the test setup when it
is missing (`apt-get install chromium`), driven from its command line: `--dump-dom` for the DOM after the
page's scripts ran, `--screenshot` for a picture.

`--virtual-time-budget` lets the page's timers and fetches run for that much page time before the dump, so a
page that polls is read after it has drawn, without a wall-clock sleep in the test.
"""

from __future__ import annotations

import functools
import os
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import pytest

# Chromium as root on a machine with no network beyond loopback: no sandbox (root), and none of the
# background connections it would otherwise try at every start.
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--hide-scrollbars",
]
BUDGET_MS = 6000  # page time: three polls of the page
TIMEOUT_S = 120


@functools.cache
def chromium() -> str:
    """The path of a Chromium binary: `SERVING_TEST_CHROMIUM`, one on PATH, or Debian's package installed
    (once per session)."""
    found = (
        os.environ.get("SERVING_TEST_CHROMIUM")
        or shutil.which("chromium")
        or shutil.which("chromium-browser")
    )
    if found:
        return found
    apt = shutil.which("apt-get")
    if apt is None:
        pytest.skip(
            "no Chromium and no apt-get to install it: set SERVING_TEST_CHROMIUM to a Chromium binary"
        )
    environment = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    install = [apt, "install", "-y", "-q", "--no-install-recommends", "chromium"]
    done = subprocess.run(install, check=False, capture_output=True, text=True, env=environment, timeout=600)
    if done.returncode != 0:  # package lists may be missing on a fresh machine
        subprocess.run([apt, "update", "-q"], check=False, capture_output=True, env=environment, timeout=600)
        done = subprocess.run(
            install, check=False, capture_output=True, text=True, env=environment, timeout=600
        )
    assert done.returncode == 0, (
        f"apt-get install chromium failed: {done.stdout[-2000:]}{done.stderr[-2000:]}"
    )
    found = shutil.which("chromium")
    assert found, "apt-get installed chromium, but no chromium is on PATH"
    return found


def _run(binary: str, profile: Path, *args: str) -> str:
    done = subprocess.run(
        [binary, *FLAGS, f"--user-data-dir={profile}", *args],
        check=False,
        capture_output=True,
        text=True,
        timeout=TIMEOUT_S,
    )
    assert done.returncode == 0, f"chromium {args}: exit {done.returncode}: {done.stderr[-3000:]}"
    return done.stdout


def dump_dom(binary: str, profile: Path, url: str) -> str:
    """The page's DOM, serialised, after BUDGET_MS of page time."""
    return _run(binary, profile, f"--virtual-time-budget={BUDGET_MS}", "--dump-dom", url)


def screenshot(binary: str, profile: Path, url: str, out: Path, size: str = "1280,1400") -> Path:
    _run(
        binary,
        profile,
        f"--virtual-time-budget={BUDGET_MS}",
        f"--window-size={size}",
        f"--screenshot={out}",
        url,
    )
    return out


VOID = {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source", "track", "wbr"}


class _Texts(HTMLParser):
    """The text of each `item` element (tr, li, figcaption...) inside the element with id `within`."""

    def __init__(self, within: str, item: str) -> None:
        super().__init__()
        self.within, self.item = within, item
        self.depth = 0  # inside `within`: how many elements deep
        self.items: list[dict[str, str]] = []
        self._current: list[str] | None = None
        self._item_depth = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        attributes = dict(attrs)
        if tag in VOID:  # no end tag follows
            return
        if self.depth:
            self.depth += 1
        elif attributes.get("id") == self.within:
            self.depth = 1
        if self.depth and tag == self.item and self._current is None:
            self._current, self._item_depth = [], self.depth
            self.items.append({"attrs": " ".join(f"{k}={v}" for k, v in attrs), "text": ""})

    def handle_endtag(self, tag: str) -> None:
        if not self.depth:
            return
        if self._current is not None and self.depth == self._item_depth and tag == self.item:
            self.items[-1]["text"] = " ".join(" ".join(self._current).split())
            self._current = None
        self.depth -= 1

    def handle_data(self, data: str) -> None:
        if self._current is not None:
            self._current.append(data)


def texts(dom: str, within: str, item: str) -> list[dict[str, str]]:
    """Each `item` element inside the element with id `within`: its attributes and its text, spaces folded."""
    parser = _Texts(within, item)
    parser.feed(dom)
    return parser.items
