"""The rendered book as a reader meets it: every chapter page opened in headless Chromium.

Builds the book into a temporary folder, then for each page in the table of contents takes a
screenshot (kept in ``_build/screenshots/``) and checks the rendered DOM for the page title, at
least one figure and typeset math. Skipped when Chromium is not installed (``.ci/run`` installs it).
"""
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from test_book import CHAPTERS, ROOT, toc_files

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="Chromium is not installed (apt-get install chromium)")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--no-first-run", "--disable-quic", "--disable-sync",
         "--hide-scrollbars", "--virtual-time-budget=8000"]


@pytest.fixture(scope="module")
def html(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("book")
    jupyter_book = Path(sys.executable).with_name("jupyter-book")
    subprocess.run([str(jupyter_book), "build", "-W", "-n", "--keep-going", "--path-output", str(out), str(ROOT)],
                   check=True, capture_output=True, timeout=600)
    return out / "_build" / "html"


def chromium(page: Path, profile: Path, *args: str) -> str:
    result = subprocess.run([CHROMIUM, *FLAGS, f"--user-data-dir={profile}", *args, page.as_uri()],
                            capture_output=True, text=True, timeout=120)
    return result.stdout


@pytest.mark.parametrize("page", toc_files())
def test_page_renders_title_figures_and_math(html, page, tmp_path):
    path = html / f"{page}.html"
    assert path.is_file(), f"{page} was not built"
    shots = ROOT / "_build" / "screenshots"
    shots.mkdir(parents=True, exist_ok=True)
    shot = shots / f"{Path(page).stem}.png"
    chromium(path, tmp_path / "profile-shot", "--window-size=1280,2000", f"--screenshot={shot}")
    assert shot.is_file() and shot.stat().st_size > 10_000, "no screenshot"

    dom = chromium(path, tmp_path / "profile-dom", "--dump-dom")
    title = re.search(r"<h1[^>]*>(.*?)<", dom, re.S)
    assert title and title.group(1).strip(), "the page has no title"
    if re.search(r'class="math[ "]', path.read_text()):  # the page has math for MathJax to typeset
        assert "<mjx-container" in dom, "MathJax did not typeset the math"
    text = re.sub(r"<(script|style)\b.*?</\1>", "", dom, flags=re.S)
    text = re.sub(r"<mjx-container.*?</mjx-container>", "", text, flags=re.S)
    text = re.sub(r"<pre.*?</pre>", "", text, flags=re.S)  # code may contain anything
    assert "$$" not in text and "\\[" not in text, "raw TeX left on the page"
    if page in CHAPTERS:
        assert re.search(r'<img[^>]+src="[^"]*_images/[^"]+\.png"', dom), "no figure from the notebook's outputs"
