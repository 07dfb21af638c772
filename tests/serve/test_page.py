"""The web page in headless Chromium: a typed question gets a streamed reply equal to the API's,
Stop frees the slot, New chat clears, and side-by-side asks two models at once. Screenshots go
to the test's tmp dir (and to $TTK_TEST_ARTEFACTS when set)."""

from __future__ import annotations

import os
import shutil

import httpx
import pytest
from cdp import Chromium, chromium_path
from serve_helpers import Server, SlowModel, client, served, tiny_model

pytestmark = pytest.mark.skipif(chromium_path() is None,
                                reason="needs Debian's chromium (apt-get install chromium); .ci/run installs it")

STATE = "document.querySelectorAll('.column')[{}].dataset.state"
REPLY = "Array.from(document.querySelectorAll('.column')[{}].querySelectorAll('.msg.assistant')).pop().textContent"


def _shot(browser, tmp_path, name):
    path = tmp_path / f"{name}.png"
    browser.screenshot(path)
    assert path.stat().st_size > 5000
    if os.environ.get("TTK_TEST_ARTEFACTS"):
        os.makedirs(os.environ["TTK_TEST_ARTEFACTS"], exist_ok=True)
        shutil.copy(path, os.environ["TTK_TEST_ARTEFACTS"])


def _slow(seed):
    model = SlowModel(tiny_model(seed=seed).cfg)
    model.load_state_dict(tiny_model(seed=seed).state_dict())
    model.delay = 0.03
    return model.eval()


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    from transformer_toolkit.serve.app import create_app

    app = create_app([served("tiny-a", model=_slow(0)), served("tiny-b", model=tiny_model(seed=1))])
    with Server(app) as server:
        browser = Chromium(tmp_path_factory.mktemp("chromium-profile"))
        try:
            browser.open(server.url + "/")
            browser.wait("document.getElementById('model-a').options.length === 2")
            yield server, browser
        finally:
            browser.close()


def _ask(browser, question: str) -> None:
    browser.js("document.getElementById('prompt').focus()")
    browser.type(question)
    browser.js("document.getElementById('send').click()")


def _api_answer(server, model, history, max_tokens):
    r = client(server).chat.completions.create(model=model, messages=history, temperature=0, max_tokens=max_tokens)
    return r.choices[0].message.content


def test_a_question_gets_a_streamed_reply(setup, tmp_path):
    server, browser = setup
    browser.js("document.getElementById('temperature').value = '0';"
               "document.getElementById('max-tokens').value = '30';"
               "document.getElementById('system').value = 'be brief'")
    _ask(browser, "what is python")
    seen = set()
    while browser.js(STATE.format(0)) != "done":  # the reply grows while it streams
        seen.add(len(browser.js(REPLY.format(0)) or ""))
    reply = browser.js(REPLY.format(0))
    assert len(seen - {0}) >= 2, "the reply arrived in one piece, not streamed"
    want = _api_answer(server, "tiny-a", [{"role": "system", "content": "be brief"},
                                          {"role": "user", "content": "what is python"}], 30)
    assert reply == want
    assert "tokens" in browser.js("document.querySelector('.stats').textContent")
    _shot(browser, tmp_path, "page-reply")


def test_stop_and_new_chat(setup, tmp_path):
    server, browser = setup
    browser.js("document.getElementById('new-chat').click();"
               "document.getElementById('max-tokens').value = '80'")
    assert browser.js("document.querySelectorAll('.msg').length") == 0
    _ask(browser, "how do i reverse a list")
    browser.wait(f"({REPLY.format(0)}).length > 3")
    browser.js("document.getElementById('stop').click()")
    browser.wait(STATE.format(0) + " === 'stopped'")
    health = lambda: httpx.get(server.url + "/health", timeout=10).json()["models"]["tiny-a"]  # noqa: E731
    for _ in range(200):
        if health()["running"] == 0:
            break
    assert health()["running"] == 0  # the stopped stream freed its slot
    assert not browser.js("document.getElementById('send').disabled")
    _shot(browser, tmp_path, "page-stopped")


def test_side_by_side_asks_both_models(setup, tmp_path):
    server, browser = setup
    browser.js("document.getElementById('new-chat').click();"
               "document.getElementById('system').value = '';"
               "document.getElementById('max-tokens').value = '20';"
               "document.getElementById('side-by-side').click()")
    assert browser.js("document.getElementById('model-b').value") == "tiny-b"
    _ask(browser, "add 2 3")
    browser.wait(f"{STATE.format(0)} === 'done' && {STATE.format(1)} === 'done'")
    question = [{"role": "user", "content": "add 2 3"}]
    assert browser.js(REPLY.format(0)) == _api_answer(server, "tiny-a", question, 20)
    assert browser.js(REPLY.format(1)) == _api_answer(server, "tiny-b", question, 20)
    assert browser.js("document.querySelectorAll('.column h2')[1].textContent") == "tiny-b"
    _shot(browser, tmp_path, "page-side-by-side")
