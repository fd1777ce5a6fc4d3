"""The rendered book as a reader meets it: every page opened in headless Chromium,
offline.

Builds the book (incrementally, in ``_build/``), opens each page of the table of
contents with Playwright driving the system's Chromium (no browser download), and checks
the whole page: its title, that every image loaded, that the figures shown are the
figures stored in the notebook, that math was typeset and no raw TeX or markdown table
syntax is left, that the results page holds one table row per chapter, and that nothing
was requested from outside the book. A screenshot of each page's first screen is kept in
``_build/screenshots/``. Skipped where Chromium or Playwright is missing (``.ci/run``
installs both).
"""

import re
import shutil
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest
from test_book import CHAPTERS, ROOT, toc_files

CHROMIUM = (
    shutil.which("chromium")
    or shutil.which("chromium-browser")
    or shutil.which("google-chrome")
)
sync_api = pytest.importorskip(
    "playwright.sync_api", reason="Playwright is not installed (pip install playwright)"
)
pytestmark = pytest.mark.skipif(
    CHROMIUM is None, reason="Chromium is not installed (apt-get install chromium)"
)
FLAGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
    "--disable-quic",
    "--disable-sync",
]


@pytest.fixture(scope="module")
def html() -> Path:
    """The book built where README command 1 builds it (``_build/html``): Sphinx
    rebuilds only the pages changed since that build, so after it this takes seconds.
    Its warnings are those of the rebuilt pages only; command 1 (and so CI) builds
    every page with ``-W -n``."""
    jupyter_book = Path(sys.executable).with_name("jupyter-book")
    done = subprocess.run(
        [str(jupyter_book), "build", "-W", "-n", "--keep-going", str(ROOT)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, (
        f"the book build failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    )
    return ROOT / "_build" / "html"


@pytest.fixture(scope="module")
def browser():
    with sync_api.sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        yield chromium
        chromium.close()


def stored_figures(page: str) -> int:
    """PNG and JPEG outputs the notebook stores in cells the rendered book shows."""
    path = ROOT / f"{page}.ipynb"
    if not path.is_file():
        return 0
    count = 0
    for cell in nbformat.read(path, as_version=4).cells:
        tags = set(cell.metadata.get("tags", []))
        if cell.cell_type != "code" or tags & {"remove-cell", "remove-output"}:
            continue
        count += sum(
            1
            for o in cell.outputs
            if {"image/png", "image/jpeg"} & set(o.get("data", {}))
        )
    return count


def open_page(browser, path: Path) -> tuple:
    """The loaded page and every URL it requested; requests that leave the book are
    blocked."""
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    requested = []
    page.on("request", lambda request: requested.append(request.url))
    page.route(re.compile(r"^https?://"), lambda route: route.abort())
    page.goto(path.as_uri(), wait_until="load", timeout=60_000)
    page.evaluate(
        "async () => { if (window.MathJax && MathJax.startup) { await "
        "MathJax.startup.promise; } }"
    )
    page.wait_for_function(
        "[...document.images].every(i => i.complete)", timeout=30_000
    )
    return page, requested


#: Tables, table cells and output blocks whose content is wider than their box: what a
#: reader would have to scroll sideways for, or would not see at all (a table wider
#: than its column is cut at the page's edge).
TOO_WIDE_JS = """() => {
    const wide = e => e.scrollWidth > e.clientWidth + 1;
    const text = e => e.innerText.split('\\n')
        .reduce((a, b) => a.length >= b.length ? a : b).slice(0, 80);
    const found = [];
    for (const table of document.querySelectorAll('article table')) {
        const box = table.parentElement;
        if (table.offsetWidth > box.clientWidth + 1 || wide(box)) {
            found.push(`table ${table.className}: ${table.offsetWidth} px in `
                + `${box.clientWidth} px`);
        }
        for (const cell of table.querySelectorAll('td, th')) {
            if (wide(cell)) found.push(`table cell: ${text(cell)}`);
        }
    }
    const outputs = '.cell_output pre, .cell_output .output';
    for (const block of document.querySelectorAll(outputs)) {
        if (wide(block)) found.push(`output: ${text(block)}`);
    }
    return found;
}"""
#: The tallest a row of the results page's tables may be, and the most screens (of the
#: test's 900-px window) its main table may take.
RESULTS_ROW_PX = 120
RESULTS_SCREENS = 2


@pytest.mark.parametrize("name", toc_files())
def test_page_renders_completely_offline(html, browser, name):
    path = html / f"{name}.html"
    assert path.is_file(), f"{name} was not built"
    page, requested = open_page(browser, path)
    try:
        shots = ROOT / "_build" / "screenshots"
        shots.mkdir(parents=True, exist_ok=True)
        # the first screen: a full page costs a second or two of CPU per chapter
        page.screenshot(path=str(shots / f"{Path(name).stem}.png"))

        external = [url for url in requested if re.match(r"^https?://", url)]
        assert external == [], (
            f"the page requested resources from outside the book: {external}"
        )
        assert page.inner_text("h1").strip(), "the page has no title"
        broken = page.evaluate(
            "[...document.images].filter(i => i.naturalWidth === 0).map(i => i.src)"
        )
        assert broken == [], f"images that did not load: {broken}"
        shown = page.evaluate("document.querySelectorAll('.cell_output img').length")
        assert shown == stored_figures(name), (
            "every figure stored in the notebook is shown, and only those"
        )
        if name in CHAPTERS:
            assert shown >= 3

        if re.search(
            r'class="math[ "]', path.read_text()
        ):  # the page has math for MathJax to typeset
            assert (
                page.evaluate("document.querySelectorAll('mjx-container').length") > 0
            ), "math was not typeset"
        text = page.evaluate("""() => {
            const copy = document.querySelector('main, article, body').cloneNode(true);
            copy.querySelectorAll('pre, code, mjx-container, script, style')
                .forEach(e => e.remove());
            return copy.innerText;
        }""")
        assert "$$" not in text and "\\[" not in text and "\\begin{" not in text, (
            "raw TeX left on the page"
        )
        assert not re.search(r"^\s*\|.*\|\s*$\n^\s*\|\s*-{3,}", text, re.M), (
            "raw markdown table syntax on the page"
        )
        assert "Colab only" not in text and "google.colab" not in text, (
            "the Colab cell is shown to readers"
        )
        assert "NBVAL" not in page.content(), "test machinery is visible"
        cut = page.evaluate("""() => [
                ...document.querySelectorAll('.cell_input pre, div.highlight pre')
            ]
            .filter(e => !e.closest('.cell_output'))
            .filter(e => e.scrollWidth > e.clientWidth + 1)
            .map(e => e.innerText.split('\\n')
                .reduce((a, b) => a.length >= b.length ? a : b))""")
        assert cut == [], (
            "code wider than the page's column, so "
            f"readers must scroll sideways: {cut[:3]}"
        )
        too_wide = page.evaluate(TOO_WIDE_JS)
        assert too_wide == [], (
            f"{len(too_wide)} tables, cells or outputs wider than their box: "
            f"{too_wide[:3]}"
        )
    finally:
        page.close()


def test_results_page_is_a_table_with_one_row_per_chapter(html, browser):
    page, _ = open_page(browser, html / "book" / "results.html")
    try:
        rows = page.evaluate(
            "[...document.querySelectorAll('table.results-table tbody tr')]"
            ".map(r => r.querySelector('td').innerText.trim())"
        )
        assert rows == [Path(c).stem for c in CHAPTERS]
        assert page.evaluate("document.querySelectorAll('.cell_input').length") == 0, (
            "the page's code is hidden"
        )
        # every row short, so the reader takes the table in at a glance
        heights = page.evaluate(
            "[...document.querySelectorAll('article table tbody tr')].map(r => "
            "[r.innerText.slice(0, 40), r.getBoundingClientRect().height])"
        )
        tall = [(text, round(h)) for text, h in heights if h > RESULTS_ROW_PX]
        assert tall == [], f"rows taller than {RESULTS_ROW_PX} px: {tall[:3]}"
        height = page.evaluate(
            "document.querySelector('table.results-table').getBoundingClientRect()"
            ".height"
        )
        assert height <= RESULTS_SCREENS * 900, f"the table is {height:.0f} px tall"
        # the full texts are one click away, under the table
        details = page.inner_text("details.results-details")
        assert "What each number means" in details
    finally:
        page.close()


def test_diffusion_chapter_shows_its_models_beside_the_gans(html, browser):
    page, _ = open_page(browser, html / "book" / "diffusion.html")
    try:
        rows = page.evaluate(
            "[...document.querySelectorAll('table.comparison-table tbody tr')]"
            ".map(r => r.querySelector('td').innerText.trim())"
        )
        assert [row.split(" (")[0].split(",")[0] for row in rows] == [
            "GAN",
            "diffusion",
            "conditional GAN",
            "diffusion",
        ], rows
        links = page.evaluate(
            "[...document.querySelectorAll('table.comparison-table a')]"
            ".map(a => a.getAttribute('href'))"
        )
        assert links == ["gan.html", "cgan.html"]
    finally:
        page.close()


def stored_audio(name: str) -> int:
    """How many playable clips (an HTML <audio> output) the notebook stores."""
    nb = nbformat.read(ROOT / f"{name}.ipynb", as_version=4)
    return sum(
        out.get("data", {}).get("text/html", "").count("<audio")
        for cell in nb.cells
        if cell.cell_type == "code"
        for out in cell.outputs
    )


def test_music_chapter_plays_every_clip_it_stores(html, browser):
    page, _ = open_page(browser, html / "book" / "music.html")
    try:
        clips = page.evaluate("""async () => Promise.all(
            [...document.querySelectorAll('audio')].map(a => new Promise(done => {
                const report = () => done({ready: a.readyState, seconds: a.duration,
                                           error: a.error && a.error.code});
                if (a.readyState >= 1) return report();
                a.addEventListener('loadedmetadata', report);
                a.addEventListener('error', report, true);
                a.querySelectorAll('source').forEach(
                    s => s.addEventListener('error', report));
                a.load();
                setTimeout(report, 10000);
            })))""")
        assert len(clips) == stored_audio("book/music") >= 4
        for clip in clips:
            assert clip["error"] is None and clip["ready"] >= 1, clip
            assert 5 < clip["seconds"] < 60, clip
    finally:
        page.close()
