"""The browser page (``web/``) in real headless Chromium against the real server.

Each test loads the page from the ``server`` fixture (a real ``server.py``
subprocess on loopback), drives it like a person (click Speak, click Stop) and
reads what the page exposes for tests, ``window.firstword``, plus what it
shows. The WebSocket frames the page sends are recorded through Playwright.

Needs the Python package ``playwright`` (no ``playwright install``: it drives
Debian's ``chromium`` at /usr/bin/chromium). If either is missing the tests
skip with the reason, except under ``CI=true``, where they fail.

Headless Chromium here has no sound card (no /dev/snd, no sound server): it
falls back to a fake audio output whose clock runs in real time, so
AudioContext, AudioWorklet and AnalyserNode work with the flags below alone.
Every wait is bounded.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import re
import signal
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import conftest
import pytest
from conftest import IN_CI, ROOT, RunningServer, http_get

try:
    from playwright.sync_api import Browser, Locator, Page, WebSocket, sync_playwright

    HAVE_PLAYWRIGHT = True
except ImportError:  # pragma: no cover - depends on the machine
    HAVE_PLAYWRIGHT = False

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--autoplay-policy=no-user-gesture-required",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
ARTIFACTS = ROOT / "artifacts"
PREBUFFER_MS = 60
SHORT_TEXT = "Hello! This is the firstword voice assistant speaking."
LONG_TEXT = (
    "This answer is long on purpose, so that there is time to interrupt it. "
    "It goes on for several sentences. Here is the third one, and it is a bit longer. "
    "A fourth sentence follows. And a fifth, to be sure that the stop comes early."
)


def browser_missing() -> str | None:
    """Why the browser tests cannot run here, or None."""
    if not HAVE_PLAYWRIGHT:
        return "the Python package 'playwright' is not installed (pip install playwright)"
    if not os.access(CHROMIUM, os.X_OK):
        return f"{CHROMIUM} is missing (apt-get install chromium)"
    return None


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    missing = browser_missing()
    if missing is not None:
        if IN_CI:
            pytest.fail(f"browser tests cannot run: {missing} (CI=true: fail, never skip)")
        pytest.skip(missing)
    with sync_playwright() as pw:
        chromium = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        yield chromium
        chromium.close()


@dataclass
class WebPage:
    """One open page and what it did: client messages sent, errors logged."""

    page: Page
    sent: list[dict[str, Any]] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    def testid(self, name: str) -> Locator:
        return self.page.get_by_test_id(name)

    def stats(self) -> dict[str, Any]:
        result: dict[str, Any] = self.page.evaluate("({...window.firstword})")
        return result

    def wait_for(self, js_condition: str, timeout_s: float) -> None:
        """Wait until ``js_condition`` holds (``s`` is ``window.firstword``); bounded."""
        self.page.wait_for_function(
            f"(() => {{ const s = window.firstword; return {js_condition}; }})()",
            timeout=timeout_s * 1000,
            polling=50,
        )

    def unexpected_errors(self) -> list[str]:
        """Errors logged, less Chromium's own line for a refused WebSocket connection."""
        return [e for e in self.errors if "WebSocket connection to" not in e]

    def shown_number(self, name: str) -> float:
        text = self.testid(name).inner_text().strip()
        assert re.fullmatch(r"\d+(\.\d+)?", text), f"{name} shows {text!r}, not a number"
        return float(text)

    def sent_types(self) -> list[str]:
        return [str(m.get("type")) for m in self.sent]


@contextlib.contextmanager
def open_page(browser: Browser, url: str) -> Iterator[WebPage]:
    """A fresh browser context showing ``url``, closed on exit."""
    context = browser.new_context(viewport={"width": 1000, "height": 860})
    page = context.new_page()
    web = WebPage(page)
    page.on("pageerror", lambda exc: web.errors.append(f"page error: {exc}"))
    page.on(
        "console",
        lambda msg: web.errors.append(f"console: {msg.text}") if msg.type == "error" else None,
    )

    def on_socket(ws: WebSocket) -> None:
        def on_sent(payload: str | bytes) -> None:
            if isinstance(payload, str):
                web.sent.append(json.loads(payload))

        ws.on("framesent", on_sent)

    page.on("websocket", on_socket)
    page.goto(url)
    try:
        yield web
    finally:
        context.close()


@pytest.fixture
def web(browser: Browser, server: RunningServer) -> Iterator[WebPage]:
    with open_page(browser, server.http + "/") as opened:
        opened.wait_for("s.state === 'ready' && s.connected", timeout_s=15)
        yield opened


def speak_and_wait_done(web: WebPage, timeout_s: float = 60) -> dict[str, Any]:
    web.testid("speak").click()
    web.wait_for("s.state === 'done'", timeout_s)
    return web.stats()


def assert_played_everything(stats: dict[str, Any]) -> None:
    rate = stats["sampleRate"]
    assert stats["framesReceived"] > 0
    assert stats["bytesReceived"] % 4 == 0
    assert stats["samplesPlayed"] > 0
    expected = stats["audioMs"] * rate / 1000
    tolerance = 0.05 * expected + PREBUFFER_MS * rate / 1000
    assert abs(stats["samplesPlayed"] - expected) <= tolerance, (stats, expected)
    # Every sample received was played once playback drained.
    assert stats["samplesPlayed"] == stats["bytesReceived"] // 4
    assert stats["samplesBuffered"] == 0


# ------------------------------------------------------------------------ tests
def test_voice_select_has_the_default_voice(web: WebPage, server: RunningServer) -> None:
    status, body = http_get(server.http + "/v1/voices")
    assert status == 200
    voices = json.loads(body)
    select = web.testid("voice")
    web.wait_for("!document.querySelector('[data-testid=voice]').disabled", timeout_s=10)
    assert select.input_value() == voices["default"]
    names = select.locator("option").evaluate_all("els => els.map(e => e.value)")
    assert names == [v["name"] for v in voices["voices"]]
    assert web.testid("speed").input_value() == "1"
    assert web.testid("status").inner_text() == "ready"
    # window.firstword is read-only.
    web.page.evaluate("() => { try { window.firstword.samplesPlayed = 123; } catch {} }")
    web.page.evaluate("() => { try { window.firstword = {}; } catch {} }")
    assert web.stats()["samplesPlayed"] == 0
    assert not web.errors


def test_speak_plays_the_whole_utterance_and_shows_ttft(web: WebPage) -> None:
    web.testid("text").fill(SHORT_TEXT)
    started = time.monotonic()
    stats = speak_and_wait_done(web)
    elapsed = time.monotonic() - started

    assert web.sent_types() == ["start", "text", "end"]
    start = web.sent[0]
    assert start["format"] == "pcm_f32le"
    assert start["sample_rate"] == stats["sampleRate"]
    assert 8000 <= start["sample_rate"] <= 48000
    assert start["frame_ms"] == 20
    assert web.sent[1]["text"] == SHORT_TEXT

    assert_played_everything(stats)
    # Real-time playback: the page cannot be done before the audio had time to play.
    assert elapsed * 1000 >= stats["audioMs"] * 0.9
    assert stats["state"] == "done"

    ttft = web.shown_number("ttft")
    assert ttft > 0 and ttft == pytest.approx(stats["ttftMs"], abs=0.06)
    click_to_sound = web.shown_number("click-to-sound")
    assert click_to_sound > 0 and click_to_sound == pytest.approx(stats["clickToSoundMs"], abs=0.06)
    assert web.shown_number("audio-ms") == pytest.approx(stats["audioMs"])
    assert web.testid("status").inner_text() == "done"

    segments = web.page.locator("[data-testid=transcript] .segment")
    assert segments.count() == stats["segments"] >= 1
    assert segments.evaluate_all("els => els.every(e => e.classList.contains('spoken'))")

    ARTIFACTS.mkdir(exist_ok=True)
    web.page.screenshot(path=str(ARTIFACTS / "web-page.png"), full_page=True)
    assert not web.errors


def test_stream_as_tokens_sends_word_by_word(web: WebPage) -> None:
    text = "Tokens arrive one word at a time, the way a language model writes."
    web.testid("text").fill(text)
    web.testid("tokens").check()
    web.testid("rate").fill("25")
    stats = speak_and_wait_done(web)

    types = web.sent_types()
    assert types[0] == "start" and types[-1] == "end"
    words = [m["text"] for m in web.sent if m["type"] == "text"]
    assert len(words) == len(text.split())
    assert [w.strip() for w in words] == text.split()
    assert "".join(words) == text
    assert_played_everything(stats)
    assert web.shown_number("ttft") > 0
    assert stats["ttfaFromFirstTextMs"] >= stats["ttftMs"] > 0
    words_sent = f"words sent {len(words)}/{len(words)}"
    assert words_sent in web.testid("detail").inner_text()
    assert not web.errors


def test_a_text_over_one_message_goes_in_pieces(web: WebPage) -> None:
    # 4 000 UTF-16 units a piece; an emoji straddles the first cut (a surrogate pair).
    text = ("x" * 3999 + "\U0001f600 " + LONG_TEXT + " ") * 2
    text = (text * (12_000 // len(text) + 1))[:12_000].strip()
    web.testid("text").fill(text)
    web.testid("speak").click()
    web.wait_for("s.state === 'speaking' || s.state === 'error'", timeout_s=15)
    web.page.wait_for_timeout(500)
    web.testid("stop").click()
    pieces = [m["text"] for m in web.sent if m["type"] == "text"]
    assert len(pieces) >= 3 and "".join(pieces) == text
    assert all(len(p.encode("utf-16-le")) // 2 <= 4000 for p in pieces)
    assert "end" in web.sent_types()
    assert web.stats()["lastError"] in (None, ""), web.stats()
    assert not web.errors


def test_stop_barges_in_and_reports_what_was_heard(web: WebPage) -> None:
    web.testid("text").fill(LONG_TEXT)
    web.testid("speak").click()
    web.wait_for("s.samplesPlayed > 0", timeout_s=30)
    web.page.wait_for_timeout(400)
    current = web.page.locator("[data-testid=transcript] .segment.current")
    assert current.count() == 1, "the segment being played is highlighted"
    before = web.stats()
    assert before["state"] == "speaking" and before["audioMs"] is None, "stop came too late"

    web.testid("stop").click()
    web.wait_for("s.state === 'stopped'", timeout_s=1)
    web.wait_for("s.heardMs !== null && s.audioSentMs !== null", timeout_s=10)
    first = web.stats()
    web.page.wait_for_timeout(300)
    second = web.stats()

    assert web.sent_types()[-1] == "cancel"
    assert first["samplesPlayed"] == second["samplesPlayed"] > 0, "playback went on after stop"
    rate = first["sampleRate"]
    # Stopped at once: what was heard after the last reading before the click stays small
    # (one stats period of 50 ms, the click's own latency, a 5 ms fade).
    assert first["samplesPlayed"] - before["samplesPlayed"] < 0.25 * rate
    heard_ms = first["heardMs"]
    assert heard_ms == pytest.approx(1000 * first["samplesPlayed"] / rate)
    assert 0 < heard_ms <= first["audioSentMs"] + 1
    assert first["spokenText"], "cancelled.spoken_text is shown"
    assert LONG_TEXT.startswith(first["spokenText"][:20])

    status = web.testid("status").inner_text()
    match = re.fullmatch(r"stopped: heard (\d+) ms of (\d+) ms sent", status)
    assert match, status
    assert int(match.group(1)) == round(heard_ms)
    assert int(match.group(2)) == round(first["audioSentMs"])
    assert web.shown_number("heard") == round(heard_ms)
    assert first["spokenText"] in web.testid("detail").inner_text()
    assert web.testid("stop").is_disabled()

    ARTIFACTS.mkdir(exist_ok=True)
    web.page.screenshot(path=str(ARTIFACTS / "web-page-stopped.png"), full_page=True)

    # The page is usable again at once: the next utterance plays in full.
    web.testid("text").fill(SHORT_TEXT)
    assert_played_everything(speak_and_wait_done(web))
    assert not web.errors


def test_server_error_is_shown_in_plain_words(web: WebPage) -> None:
    # A voice the server does not have (the select only offers real ones).
    web.page.evaluate(
        "() => document.querySelector('[data-testid=voice]')"
        ".add(new Option('nope', 'nope', true, true))"
    )
    web.testid("text").fill(SHORT_TEXT)
    web.testid("speak").click()
    web.wait_for("s.state === 'error'", timeout_s=10)
    status = web.testid("status").inner_text()
    assert status.startswith("error: ") and "nope" in status
    web.page.wait_for_timeout(300)
    assert web.stats()["samplesPlayed"] == 0, "nothing plays after an error"

    web.testid("voice").select_option(index=0)
    assert_played_everything(speak_and_wait_done(web))
    assert not web.errors


def test_idle_close_then_speak_reconnects(
    browser: Browser, server_factory: Callable[..., RunningServer]
) -> None:
    idle = server_factory("--idle-timeout", "1")
    with open_page(browser, idle.http + "/") as web:
        # The server closes an idle session cleanly (1000): no retry loop, Speak reconnects.
        web.wait_for("s.state === 'offline' && !s.connected", timeout_s=15)
        assert web.testid("status").inner_text().startswith("disconnected")
        web.testid("text").fill(SHORT_TEXT)
        assert_played_everything(speak_and_wait_done(web))
        assert not web.unexpected_errors()


def test_reconnects_by_itself_when_the_server_comes_back(
    browser: Browser,
    server_factory: Callable[..., RunningServer],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    first = server_factory()
    with open_page(browser, first.http + "/") as web:
        web.wait_for("s.state === 'ready' && s.connected", timeout_s=15)
        first.stop()  # SIGTERM: the server closes the session with 1001
        web.wait_for("s.state === 'connecting' && !s.connected", timeout_s=10)
        assert "reconnecting" in web.testid("status").inner_text()
        # Speak while it is down: one plain error after the connect timeout (5 s), not
        # "connection closed" for a socket that never opened, then another.
        web.testid("text").fill(SHORT_TEXT)
        web.testid("speak").click()
        web.wait_for("s.state === 'error'", timeout_s=10)
        assert web.stats()["lastError"] == "could not connect to the server"
        web.page.wait_for_timeout(1500)
        assert web.testid("status").inner_text() == "error: could not connect to the server"
        # A new server on the same port: the page finds it without a click.
        monkeypatch.setattr(conftest, "free_port", lambda: first.port)
        again = server_factory()
        assert again.port == first.port
        web.wait_for("s.state === 'ready' && s.connected", timeout_s=20)
        web.testid("text").fill(SHORT_TEXT)
        assert_played_everything(speak_and_wait_done(web))
        assert not web.unexpected_errors()


def test_page_files_are_served_with_script_types(server: RunningServer) -> None:
    # A module script or worklet served under another type is refused by the browser.
    for name, kind in [
        ("/", "text/html"),
        ("/app.js", "text/javascript"),
        ("/player-worklet.js", "text/javascript"),
        ("/style.css", "text/css"),
    ]:
        with urllib.request.urlopen(server.http + name, timeout=5) as r:
            assert r.status == 200 and r.read(), name
            assert r.headers.get_content_type() in (kind, "application/javascript"), name
    page = (ROOT / "web" / "index.html").read_text()
    for testid in ("text", "speak", "stop", "ttft", "status", "voice", "speed", "tokens"):
        assert f'data-testid="{testid}"' in page
    assert "<audio" not in page


def test_a_full_server_is_retried_with_backoff_not_in_a_loop(
    browser: Browser, server_factory: Callable[..., RunningServer]
) -> None:
    full = server_factory("--max-sessions", "1")
    with open_page(browser, full.http + "/") as holder:
        holder.wait_for("s.state === 'ready' && s.connected", timeout_s=15)
        with open_page(browser, full.http + "/") as refused:
            attempts: list[float] = []
            refused.page.on("websocket", lambda ws: attempts.append(time.monotonic()))
            refused.wait_for("s.state === 'connecting' && !s.connected", timeout_s=10)
            refused.page.wait_for_timeout(6000)
            status = refused.testid("status").inner_text()
            # 0.5, 1, 2, 4 s apart: at most 4 tries in 6 s (a reset on every accepted
            # socket retried every ~0.5 s: 12).
            assert 2 <= len(attempts) <= 4, (len(attempts), status)
            gaps = [b - a for a, b in itertools.pairwise(attempts)]
            assert gaps == sorted(gaps), gaps
            assert "server full" in status, status
    assert not holder.unexpected_errors()


def test_stopping_a_long_text_shows_a_shortened_unspoken_text(web: WebPage) -> None:
    long_text = " ".join([LONG_TEXT] * 20)
    web.testid("text").fill(long_text)
    web.testid("speak").click()
    web.wait_for("s.samplesPlayed > 0", timeout_s=30)
    web.testid("stop").click()
    web.wait_for("s.state === 'stopped' && s.unspokenText !== null", timeout_s=10)
    stats = web.stats()
    assert len(stats["unspokenText"]) > 1000, "the stats keep the whole text"
    detail = web.testid("detail").inner_text()
    assert "…" in detail and len(detail) < 600, len(detail)


def test_speak_over_speak_reports_the_second_utterance_only(web: WebPage) -> None:
    web.testid("text").fill(LONG_TEXT)
    web.testid("speak").click()
    web.wait_for("s.samplesPlayed > 0", timeout_s=30)
    web.testid("text").fill(SHORT_TEXT)
    stats = speak_and_wait_done(web)
    # The first utterance's cancel answer must not leak into the second's figures.
    assert stats["spokenText"] is None and stats["unspokenText"] is None, stats
    assert stats["audioSentMs"] is None or stats["audioSentMs"] <= stats["audioMs"] + 1, stats
    assert_played_everything(stats)


def test_done_after_the_server_went_away_says_so(
    browser: Browser, server_factory: Callable[..., RunningServer]
) -> None:
    leaving = server_factory()
    with open_page(browser, leaving.http + "/") as web:
        web.wait_for("s.state === 'ready' && s.connected", timeout_s=15)
        web.testid("text").fill(SHORT_TEXT)
        web.testid("speak").click()
        web.wait_for("s.samplesPlayed > 0", timeout_s=30)
        leaving.process.send_signal(signal.SIGTERM)  # drains: the utterance is finished
        web.wait_for("s.state === 'done'", timeout_s=60)
        status = web.testid("status").inner_text()
        assert status == "done · disconnected; reconnecting", status
        assert not web.unexpected_errors()
