"""The documentation site: built with warnings as errors, its links resolved, two pages rendered.

Opt-in (``-m docs_site``; .ci/run runs it): needs the docs extra (``pip install -e ".[docs]"``)
and the system's Chromium (Debian: ``apt-get install -y chromium``)::

    .venv/bin/python -m pytest -m docs_site -n 0 -rP tests/docs/test_site.py

1. ``sphinx-build -W --keep-going -n -E -b html docs docs/_build/html``: every warning (and, with
   ``-n``, every unresolved cross-reference) fails the test, listed.
2. Every local link of the built site resolves: the file exists and, for ``page.html#anchor``,
   the page has an element with that id.
3. The landing page and the API page of ``adamx.adam`` (found in the built site: the page that
   holds ``id="adamx.adam"`` and maths) are served from 127.0.0.1 and rendered in headless
   Chromium (playwright driving the system's ``chromium``): MathJax rendered every maths element
   (an ``mjx-container`` in each, no ``merror``, no raw ``\\(``, ``\\[`` or ``$$`` left in the
   text outside code), no console error, no page error, no failed or 4xx/5xx request, and no
   request left the site (everything, MathJax included, is served by the site itself).
   Full-page screenshots go to docs/_build/screenshots/ (gitignored) and their paths are printed.
"""

import functools
import http.server
import re
import shutil
import subprocess
import sys
import threading
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote, urlsplit

import pytest

pytestmark = pytest.mark.docs_site

REPO = Path(__file__).resolve().parents[2]
DOCS = REPO / "docs"
BUILD = DOCS / "_build"
HTML = BUILD / "html"
SCREENSHOTS = BUILD / "screenshots"
NEEDS = 'the docs extra (pip install -e ".[docs]") and chromium (apt-get install -y chromium)'


@pytest.fixture(scope="module")
def build() -> subprocess.CompletedProcess:
    """The site, built from scratch (-E: an incremental build would not repeat old warnings)."""
    cmd = [sys.executable, "-m", "sphinx", "-W", "--keep-going", "-n", "-E", "-b", "html"]
    cmd += ["-d", str(BUILD / "doctrees"), str(DOCS), str(HTML)]
    done = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, check=False)
    if not (HTML / "index.html").exists():
        pytest.fail(f"the site did not build ({' '.join(cmd)}):\n{done.stdout}\n{done.stderr}")
    return done


def test_site_builds_without_warnings(build):
    warnings = [line for line in build.stderr.splitlines() if re.search(r"WARNING|ERROR", line)]
    assert build.returncode == 0 and not warnings, (
        f"sphinx-build -W -n: {len(warnings)} warnings (exit {build.returncode}):\n"
        + "\n".join(warnings or build.stderr.splitlines()[-20:])
    )


class _Page(HTMLParser):
    """The ids and the link targets (<a href>) of one html page."""

    def __init__(self):
        super().__init__()
        self.ids: set[str] = set()
        self.hrefs: list[str] = []

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        for key in ("id", "name") if tag == "a" else ("id",):
            if attrs.get(key):
                self.ids.add(attrs[key])
        if tag == "a" and attrs.get("href"):
            self.hrefs.append(attrs["href"])


@functools.cache
def _parse(path: Path) -> _Page:
    page = _Page()
    page.feed(path.read_text(encoding="utf-8"))
    return page


def _has_id(page_path: Path, fragment: str) -> bool:
    return unquote(fragment) in _parse(page_path).ids


def _broken_links(page_path: Path) -> list[str]:
    broken = []
    for href in _parse(page_path).hrefs:
        parts = urlsplit(href)
        if parts.scheme or parts.netloc:  # http(s), mailto: not the site's (no internet in CI)
            continue
        target = (page_path.parent / unquote(parts.path)).resolve() if parts.path else page_path
        if parts.path.endswith("/"):
            target = target / "index.html"
        where = f"{page_path.relative_to(HTML)}: {href}"
        if not target.is_relative_to(HTML.resolve()) or not target.is_file():
            broken.append(f"{where} (no file {target})")
        elif parts.fragment and target.suffix == ".html" and not _has_id(target, parts.fragment):
            broken.append(f"{where} (no id {parts.fragment!r} in {target.name})")
    return broken


def test_internal_links_resolve(build):
    pages = sorted(HTML.rglob("*.html"))
    broken = [b for page in pages for b in _broken_links(page)]
    assert not broken, f"{len(broken)} broken internal links:\n" + "\n".join(broken)
    print(f"{len(pages)} pages, every local link resolves")


def _api_page() -> Path:
    """The built page that documents adamx.adam with maths (wherever docs/api/ puts it)."""
    pages = [
        p
        for p in sorted(HTML.rglob("*.html"))
        if 'id="adamx.adam"' in (text := p.read_text(encoding="utf-8")) and 'class="math' in text
    ]
    assert pages, "no page of the built site documents adamx.adam (id='adamx.adam') with maths"
    return min(pages, key=lambda p: p.stat().st_size)  # its own page, not a long listing


@pytest.fixture(scope="module")
def server(build):
    """The built site over http on 127.0.0.1 (what a user's browser sees), quiet."""

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):
            pass

    handler = functools.partial(Quiet, directory=str(HTML))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture(scope="module")
def browser():
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.fail(f"the browser check needs {NEEDS}: playwright is not installed")
    chromium = shutil.which("chromium")
    if chromium is None:
        pytest.fail(f"the browser check needs {NEEDS}: no chromium on PATH")
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, headless=True)
        yield browser
        browser.close()


# Every maths element holds MathJax's output; what MathJax could not parse; the visible text
# outside code, maths and scripts (raw TeX left there means MathJax did not run on it).
_CHECK_MATHS = """() => {
    const maths = [...document.querySelectorAll('.math')];
    const clone = document.body.cloneNode(true);
    clone.querySelectorAll('pre, code, script, style, mjx-container').forEach(e => e.remove());
    return {
        maths: maths.length,
        rendered: maths.filter(e => e.querySelector('mjx-container')).length,
        containers: document.querySelectorAll('mjx-container').length,
        merrors: document.querySelectorAll('mjx-merror, [data-mml-node="merror"]').length,
        text: clone.textContent,
    };
}"""


def _render(browser, server: str, page_path: Path, name: str) -> dict:
    """Open the page, let MathJax finish, screenshot it; what the checks need."""
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    seen = {"requests": [], "outside": [], "console": [], "errors": [], "failed": []}
    page = browser.new_page(viewport={"width": 1280, "height": 900})

    def route(r):
        if r.request.url.startswith((server + "/", "data:", "blob:")):
            r.continue_()
        else:  # never reach out: recorded and refused
            seen["outside"].append(r.request.url)
            r.abort()

    page.route("**/*", route)
    page.on("request", lambda req: seen["requests"].append(req.url))
    page.on("console", lambda m: m.type == "error" and seen["console"].append(m.text))
    page.on("pageerror", lambda e: seen["errors"].append(str(e)))
    page.on("requestfailed", lambda req: seen["failed"].append(f"{req.url}: {req.failure}"))
    page.on("response", lambda r: r.status >= 400 and seen["failed"].append(f"{r.url}: {r.status}"))
    url = f"{server}/{page_path.relative_to(HTML).as_posix()}"
    page.goto(url, wait_until="networkidle")
    if page.evaluate("() => !!document.querySelector('.math')"):
        started = "() => window.MathJax && MathJax.startup && MathJax.startup.promise"
        try:
            page.wait_for_function(started, timeout=30_000)
            page.evaluate("() => MathJax.startup.promise.then(() => true)")
        except PlaywrightTimeout:
            seen["errors"].append("the page has maths, but MathJax did not start within 30 s")
    seen["maths"] = page.evaluate(_CHECK_MATHS)
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    shot = SCREENSHOTS / f"{name}.png"
    page.screenshot(path=str(shot), full_page=True)
    print(f"{url}: screenshot {shot} ({len(seen['requests'])} requests)")
    page.close()
    return seen


def _check(seen: dict, page: str, need_maths: bool) -> list[str]:
    m = seen["maths"]
    problems = [f"{page}: console error: {t}" for t in seen["console"]]
    problems += [f"{page}: page error: {t}" for t in seen["errors"]]
    problems += [f"{page}: request failed: {t}" for t in seen["failed"]]
    problems += [f"{page}: request left the site: {u}" for u in seen["outside"]]
    if need_maths and m["maths"] == 0:
        problems.append(f"{page}: no maths on the page")
    if m["rendered"] < m["maths"]:
        problems.append(f"{page}: MathJax rendered {m['rendered']} of {m['maths']} maths elements")
    if m["merrors"]:
        problems.append(f"{page}: {m['merrors']} merror elements (TeX MathJax could not parse)")
    raw = [s for s in ("\\(", "\\[", "$$") if s in m["text"]]
    if raw:
        problems.append(f"{page}: raw TeX delimiters {raw} left in the visible text")
    return problems


def test_landing_page_renders(build, server, browser):
    seen = _render(browser, server, HTML / "index.html", "index")
    problems = _check(seen, "index.html", need_maths=False)
    assert not problems, "\n".join(problems)


def test_api_page_renders_its_maths(build, server, browser):
    page = _api_page()
    seen = _render(browser, server, page, "api-" + page.stem)
    problems = _check(seen, str(page.relative_to(HTML)), need_maths=True)
    assert not problems, "\n".join(problems)
    print(f"{page.name}: {seen['maths']['containers']} formulas rendered by MathJax")
