"""The web page at `/` in a real headless browser: Debian's chromium (/usr/bin/chromium) driven by
Playwright against the real Ray Serve app of tests/serve_fixture.py (two tiny trained runs).

The page loads only from 127.0.0.1 (every request it makes is recorded), lists the models with the
server's default preselected, and for each mode draws what the server answered: a pred answer as a
piano roll (notes really painted on the canvas), a download that is the sample's MIDI, WebAudio
playback; a continue of an uploaded file (read and base64-encoded by the page) with the upload's
bars shaded as seed; an intpol whose slider walks the steps; and a refused request's own error."""

from __future__ import annotations

import base64
import re
from pathlib import Path
from urllib.parse import urlparse

import pytest
import requests
from playwright.sync_api import sync_playwright

from mahler_dist.serve.page import page_html
from serve_fixture import SEED_PIECE, serve_app  # noqa: F401  (the module-scoped fixture)

pytestmark = pytest.mark.integration

CHROMIUM = Path("/usr/bin/chromium")
LAUNCH_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
               "--disable-background-networking", "--disable-component-update", "--disable-sync",
               "--autoplay-policy=no-user-gesture-required"]
GENERATE_TIMEOUT_MS = 120_000      # a decode on a loaded 2-core box
LOCAL_SCHEMES = {"data", "blob", "about"}

NO_CHROMIUM = (f"{CHROMIUM} not found (Debian's chromium package; `make browser` installs it): "
               "the page test needs a real browser")
needs_chromium = pytest.mark.skipif(not CHROMIUM.exists(), reason=NO_CHROMIUM)

# notes are painted in saturated instrument colours; the roll's background, grid and seed shading are greys
SATURATED_PIXELS_JS = """() => {
  const c = document.querySelector('#roll');
  const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
  let n = 0;
  for (let i = 0; i < d.length; i += 4) {
    if (Math.max(d[i], d[i + 1], d[i + 2]) - Math.min(d[i], d[i + 1], d[i + 2]) > 80) n++;
  }
  return n;
}"""

DOWNLOAD_HEAD_JS = """async () => {
  const r = await fetch(document.querySelector('#download').href);
  const b = new Uint8Array(await r.arrayBuffer());
  return String.fromCharCode(...b.slice(0, 4));
}"""


def test_page_is_self_contained():
    """No external asset at all: no absolute or protocol-relative URL in any src/href/action, no
    @import or url() from elsewhere; the API is called by relative paths on the page's own origin."""
    html = page_html()
    assert html.lstrip().lower().startswith("<!doctype html>")
    absolute = r"""\b(?:src|href|action|srcset)\s*=\s*["']?\s*(?:[a-z][a-z0-9+.-]*:)?//"""
    assert not re.search(absolute, html, re.I)
    assert not re.search(r"""@import|url\(\s*["']?\s*(?:[a-z]+:)?//""", html, re.I)
    assert "https://" not in html and "http://" not in html
    for route in ("v1/models", "v1/generate"):
        assert re.search(r"""fetch\(\s*["']""" + route, html), route


class Session:
    """One page in a fresh browser context; every request it makes is recorded, requests to any
    other host are refused (and fail the test), page errors are kept."""

    def __init__(self, browser, url: str):
        self.url = url
        self.context = browser.new_context(viewport={"width": 1280, "height": 900}, accept_downloads=True)
        self.context.set_default_timeout(60_000)
        self.requests: list[str] = []
        self.errors: list[str] = []
        self.context.route("**/*", self._route)
        self.page = self.context.new_page()
        self.page.on("request", lambda r: self.requests.append(r.url))
        self.page.on("pageerror", lambda e: self.errors.append(f"page error: {e}"))
        self.page.on("console", lambda m: self.errors.append(f"console {m.type}: {m.text}")
                     if m.type == "error" else None)

    def _route(self, route):
        if is_local(route.request.url):
            route.continue_()
        else:
            self.requests.append(route.request.url)
            route.abort()

    def open(self) -> None:
        self.page.goto(self.url + "/")
        self.page.wait_for_function("[...document.querySelectorAll('#model option')].some(o => o.value)")

    def generate(self, expect_ok: bool = True) -> tuple[dict, dict]:
        """Press Generate; returns (the body the page posted, the server's JSON answer)."""
        page = self.page
        before = page.evaluate("window.mahlerLastRender ? window.mahlerLastRender.seq : 0")
        with page.expect_request("**/v1/generate") as req, \
                page.expect_response("**/v1/generate", timeout=GENERATE_TIMEOUT_MS) as resp:
            page.click("#generate")
        response = resp.value
        answer = response.json()
        if expect_ok:
            assert response.status == 200, answer
            page.wait_for_function(f"window.mahlerLastRender && window.mahlerLastRender.seq > {before}")
        return req.value.post_data_json, answer | {"_status": response.status}

    def render(self) -> dict:
        return self.page.evaluate("window.mahlerLastRender")

    def assert_clean(self, refused: bool = False) -> None:
        """No request to another host, no page error; `refused`: the console line chromium logs
        for a 4xx answer is expected."""
        foreign = [u for u in self.requests if not is_local(u)]
        assert not foreign, f"the page asked other hosts: {foreign}"
        assert any(urlparse(u).path == "/v1/models" for u in self.requests)
        errors = [e for e in self.errors if not (refused and "Failed to load resource" in e)]
        assert not errors, errors

    def close(self) -> None:
        self.context.close()


def is_local(url: str) -> bool:
    parsed = urlparse(url)
    if parsed.scheme in LOCAL_SCHEMES:
        return True
    return parsed.scheme in ("http", "https") and parsed.hostname == "127.0.0.1"


@pytest.fixture(scope="module")
def browser():
    if not CHROMIUM.exists():
        pytest.skip(NO_CHROMIUM)
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=str(CHROMIUM), args=LAUNCH_ARGS)
        try:
            yield b
        finally:
            b.close()


@pytest.fixture
def session(browser, serve_app):
    s = Session(browser, serve_app["url"])
    try:
        yield s
    finally:
        s.close()


def upload_seed_piece(page) -> None:
    page.set_input_files("#midi-file", str(SEED_PIECE))
    size = SEED_PIECE.stat().st_size
    page.wait_for_function(f"document.querySelector('#file-info').textContent.includes('{size} bytes')")


@needs_chromium
def test_pred_draws_a_roll_downloads_midi_and_plays(session, serve_app):
    page = session.page
    session.open()
    models = requests.get(serve_app["url"] + "/v1/models", timeout=30).json()
    options = page.eval_on_selector_all("#model option", "os => os.map(o => o.value)")
    assert options == [m["id"] for m in models]
    default = next(m["id"] for m in models if m["default"])
    assert page.input_value("#model") == default
    assert page.input_value("#mode") == "pred"

    page.fill("#bars", "2")
    page.fill("#samples", "2")
    page.fill("#seed", "7")
    body, answer = session.generate()
    assert body["mode"] == "pred" and body["bars"] == 2 and body["samples"] == 2 and body["seed"] == 7
    assert body["model"] == default and "midi" not in body and "units" not in body
    assert answer["model"] == default and answer["seed"] == 7 and len(answer["samples"]) == 2

    # the roll: the first sample's notes, bars from bar_starts, really painted
    page.wait_for_function("window.mahlerLastRender.notes > 0")
    first = answer["samples"][0]
    assert session.render().items() >= {"notes": len(first["events"]), "bars": len(first["bar_starts"]),
                                        "seedBars": 0, "mode": "pred", "sample": 0}.items()
    assert page.evaluate(SATURATED_PIXELS_JS) > 0
    assert page.text_content("#seed-used") == "7"
    assert "piano" in page.text_content("#legend")          # instruments[] names the one class used
    assert page.locator("#stats tbody tr").count() == 2

    # the sample selector switches to the second sample
    assert page.locator("#sample option").count() == 2
    page.select_option("#sample", "1")
    second = answer["samples"][1]
    page.wait_for_function("window.mahlerLastRender.sample === 1")
    assert session.render()["notes"] == len(second["events"])

    # the download is the selected sample's MIDI
    assert page.evaluate(DOWNLOAD_HEAD_JS) == "MThd"
    assert page.get_attribute("#download", "download").endswith(".mid")
    with page.expect_download() as dl:
        page.click("#download")
    data = Path(dl.value.path()).read_bytes()
    assert data[:4] == b"MThd" and data == base64.b64decode(second["midi"])

    # WebAudio: Play starts an AudioContext; the button toggles to Stop and back
    page.click("#play")
    page.wait_for_function("window.mahlerAudioReady === true")
    assert page.get_attribute("#play", "aria-pressed") == "true"
    page.click("#play")
    assert page.get_attribute("#play", "aria-pressed") == "false"
    session.assert_clean()


@needs_chromium
def test_continue_of_an_upload_shades_the_seed_bars(session):
    page = session.page
    session.open()
    page.select_option("#mode", "continue")
    page.select_option("#model", "b/best")
    upload_seed_piece(page)
    page.fill("#bars", "2")
    page.fill("#seed", "3")
    body, answer = session.generate()
    assert base64.b64decode(body["midi"]) == SEED_PIECE.read_bytes()     # FileReader + base64 in the page
    assert body["mode"] == "continue" and body["model"] == "b/best" and body["bars"] == 2
    assert answer["model"] == "b/best"
    sample = answer["samples"][0]
    seed_bars = sample["new_from_bar"]
    assert seed_bars > 0
    r = session.render()
    assert r["mode"] == "continue" and r["seedBars"] == seed_bars and r["bars"] == seed_bars + 2
    assert r["notes"] == len(sample["events"]) > 0
    assert f"bars 1–{seed_bars}" in page.text_content("#seed-note")
    assert f"bars 1 to {seed_bars} are the seed" in page.get_attribute("#roll", "aria-label")
    assert page.evaluate(SATURATED_PIXELS_JS) > 0
    session.assert_clean()


@needs_chromium
def test_intpol_slider_walks_the_steps(session):
    page = session.page
    session.open()
    page.select_option("#mode", "intpol")
    assert page.is_hidden("#bars") and page.is_hidden("#samples") and page.is_visible("#units")
    upload_seed_piece(page)
    page.fill("#units", "0cz,3cz")
    page.fill("#steps", "3")
    page.fill("#seed", "1")
    body, answer = session.generate()
    assert body["units"] == ["0cz", "3cz"] and body["steps"] == 3 and "samples" not in body
    sample = answer["samples"][0]
    assert len(sample["bar_starts"]) == 4
    assert page.is_visible("#step-slider") and page.get_attribute("#step-slider", "max") == "3"
    assert session.render()["highlight"] == 0

    # keyboard: the slider takes arrow keys; each step redraws with that bar highlighted
    page.focus("#step-slider")
    page.keyboard.press("ArrowRight")
    page.keyboard.press("ArrowRight")
    page.wait_for_function("window.mahlerLastRender.highlight === 2")
    notes_in_2 = sum(1 for e in sample["events"] if e["bar"] == 2)
    assert page.text_content("#step-label").startswith(f"step 2 of 3: {notes_in_2} notes")
    page.keyboard.press("End")
    page.wait_for_function("window.mahlerLastRender.highlight === 3")
    assert page.evaluate(SATURATED_PIXELS_JS) > 0
    page.click("#play-step")
    page.wait_for_function("window.mahlerAudioReady === true")
    assert page.get_attribute("#play-step", "aria-pressed") == "true"
    session.assert_clean()


@needs_chromium
def test_a_refused_request_shows_the_servers_error(session):
    page = session.page
    session.open()
    page.select_option("#mode", "recon")
    upload_seed_piece(page)
    page.fill("#units", "")
    body, answer = session.generate(expect_ok=False)
    assert "units" not in body and answer["_status"] == 422
    error = answer["error"]
    assert "needs units" in error
    page.wait_for_function("document.querySelector('#status').classList.contains('error')")
    assert error in page.text_content("#status")
    assert page.evaluate("window.mahlerLastRender") is None        # nothing drawn from a refusal
    session.assert_clean(refused=True)
