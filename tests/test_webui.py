"""The browser page (runner/server/webui.py, runner/server/ui/): HTTP checks, then a real headless
Chromium (tests/browser.py) against the real daemon with smollm2:135m, and a real OCI registry for pulls.

A failing browser test saves a screenshot of the page into its tmp dir and prints the path.
"""

from __future__ import annotations

import json
import re
import time
import urllib.error
import urllib.request

import pytest

from runner.server.webui import prefers_html, shipped_files
from tests.browser import MISSING, console_errors, have_browser, start_browser, wait_for
from tests.conftest import Daemon, create_bundled
from tests.gguf_factory import write_tiny_gguf
from tests.test_registry_oci import MiB, Proxy, needs_registry, registry  # noqa: F401  (fixture)
from tests.test_security import call

needs_browser = pytest.mark.skipif(not have_browser(), reason=MISSING)
KEY = "ui-key-" + "k" * 40
MODEL = "smollm2:135m"
BROWSER_ACCEPT = "text/html,application/xhtml+xml,application/xml;q=0.9,image/avif,image/webp,*/*;q=0.8"


# ---------------------------------------------------------------- pure logic

def test_prefers_html():
    assert prefers_html(BROWSER_ACCEPT)
    assert prefers_html("text/html")
    for accept in ("", "*/*", "application/json", "text/plain", "text/html;q=0", "text/html;q=x"):
        assert not prefers_html(accept), accept


def test_the_page_ships_its_files():
    files = shipped_files()
    for name in ("index.html", "style.css", "js/main.js", "js/api.js", "js/chat.js", "js/models.js",
                 "js/markdown.js", "vendor/marked.esm.js", "vendor/purify.es.mjs", "vendor/marked.LICENSE.txt",
                 "vendor/dompurify.LICENSE.txt"):
        assert name in files, name
    for path in files.values():  # offline: nothing is fetched from elsewhere
        if path.suffix in (".html", ".css") or path.parent.name == "js":
            assert not re.search(r"""(src|href|url)\s*[=(]\s*["']?(https?:)?//""", path.read_text()), path


# ---------------------------------------------------------------- over HTTP

@pytest.fixture(scope="module")
def keyed(tmp_path_factory):
    d = Daemon(tmp_path_factory.mktemp("ui-keyed"), {"LM_API_KEYS": KEY}).start()
    yield d
    d.stop()


def test_root_answers_api_clients_and_sends_browsers_to_the_page(keyed):
    assert call(keyed, "GET", "/")[::2] == (200, "lm is running")
    assert call(keyed, "GET", "/", {"Accept": "application/json"})[::2] == (200, "lm is running")
    req = urllib.request.Request(keyed.url + "/", headers={"Accept": BROWSER_ACCEPT})

    class NoRedirect(urllib.request.HTTPRedirectHandler):
        def redirect_request(self, *args, **kwargs):
            return None

    with pytest.raises(urllib.error.HTTPError) as answer:
        urllib.request.build_opener(NoRedirect).open(req, timeout=10)
    assert answer.value.code == 302 and answer.value.headers["Location"] == "/ui/"


def test_page_loads_without_a_key_and_the_api_still_needs_one(keyed):
    status, headers, body = call(keyed, "GET", "/ui/")
    assert status == 200 and headers["Content-Type"].startswith("text/html") and "<title>lm</title>" in body
    csp = headers["Content-Security-Policy"]
    assert "script-src 'self'" in csp and "connect-src 'self'" in csp and "frame-ancestors 'none'" in csp
    assert headers["X-Content-Type-Options"] == "nosniff"
    status, headers, _ = call(keyed, "GET", "/ui/js/chat.js")
    assert status == 200 and headers["Content-Type"].startswith("text/javascript")
    status, headers, _ = call(keyed, "GET", "/ui/vendor/purify.es.mjs")
    assert status == 200 and headers["Content-Type"].startswith("text/javascript")
    assert call(keyed, "GET", "/ui/nope.js")[::2] == (404, {"error": "404 page not found"})
    assert call(keyed, "GET", "/ui")[0] == 200  # redirected to /ui/ (urllib follows)
    # The exemption is the static files' routes, not a path prefix: the API behind them still wants a key.
    for path in ("/api/tags", "/ui/../api/tags", "/ui/%2e%2e/api/tags", "/metrics"):
        status, _, body = call(keyed, "GET", path)
        assert status in (401, 404) and "models" not in (body or {}), (path, status, body)
    assert call(keyed, "POST", "/ui/index.html", body={})[0] in (401, 405)
    assert call(keyed, "GET", "/api/tags", {"Authorization": f"Bearer {KEY}"})[0] == 200


def test_the_page_obeys_the_host_rule(keyed):
    status, _, body = call(keyed, "GET", "/ui/", {"Host": "evil.example"})
    assert status == 403 and body == {"error": "host not allowed"}


# ---------------------------------------------------------------- in a real browser

@pytest.fixture(scope="module")
def chat_daemon(tmp_path_factory, smollm2_path):
    """One slot, so a request that was not cancelled would be seen holding it."""
    d = Daemon(tmp_path_factory.mktemp("ui-models"), {"LM_NUM_PARALLEL": "1"}).start()
    create_bundled(d, MODEL, smollm2_path)
    yield d
    d.stop()


@pytest.fixture
def browser(request, tmp_path):
    driver = start_browser()
    failed_before = request.session.testsfailed
    yield driver
    # The call phase's report is in by teardown: a failure has been counted.
    if request.session.testsfailed > failed_before:
        shot = tmp_path / f"{request.node.name}.png"
        driver.save_screenshot(str(shot))
        print(f"\nscreenshot of the failing page: {shot}\nbrowser console: {console_errors(driver)}")
    driver.quit()


def js(driver, script, *args):
    return driver.execute_script(script, *args)


def by_id(driver, element_id):
    return driver.find_element("id", element_id)


def open_page(driver, d: Daemon):
    driver.get(d.url + "/")
    assert driver.current_url == d.url + "/ui/"
    wait_for(lambda: js(driver, "return [...document.querySelectorAll('#model-select option')].some("
                                "o => o.value === arguments[0])", MODEL), 30, what="the model menu")


def last_answer(driver) -> dict:
    return js(driver, """
        const all = document.querySelectorAll('.message.assistant');
        const m = all[all.length - 1];
        return m ? {text: m.querySelector('.body').textContent, meta: m.querySelector('.meta').textContent,
                    streaming: !document.getElementById('stop').hidden} : null;""")


def send(driver, text: str, **options):
    by_id(driver, "settings").click()
    for name, value in options.items():
        box = by_id(driver, f"opt-{name}")
        box.clear()
        box.send_keys(str(value))
    prompt = by_id(driver, "prompt")
    prompt.send_keys(text)
    by_id(driver, "send").click()


def click_row_button(driver, table: str, model: str, label: str) -> None:
    """Clicks a model row's button (found afresh each try: the tables redraw when the models change)."""
    def click():
        row = driver.find_element("css selector", f'#{table}-rows tr[data-model="{model}"]')
        row.find_element("xpath", f".//button[text()='{label}']").click()
        return True

    wait_for(click, 10, what=f"{label} on {model}")


def metric(d: Daemon, name: str, labels: str = "") -> float | None:
    text = d.get("/metrics")[1]
    match = re.search(rf"^{re.escape(name + labels)} (\S+)$", text, re.M)
    return float(match.group(1)) if match else None


@needs_browser
def test_chat_streams_and_the_conversation_survives_a_reload(chat_daemon, browser):
    open_page(browser, chat_daemon)
    assert by_id(browser, "model-select").get_attribute("value") == MODEL
    send(browser, "Write a short poem about the sea.", temperature=0, num_predict=96)
    lengths = []
    while True:  # sample the answer while it streams
        answer = last_answer(browser)
        if answer and answer["streaming"]:
            lengths.append(len(answer["text"]))
        elif lengths:
            break
        time.sleep(0.02)
    grown = sorted({n for n in lengths if n > 0})
    assert len(grown) >= 2, f"the answer did not grow while streaming: {lengths}"
    final = wait_for(lambda: (a := last_answer(browser)) and "tokens/s" in a["meta"] and a, 10, what="stats")
    assert len(final["text"]) >= grown[-1] and "first token" in final["meta"] and "tokens" in final["meta"]
    assert not console_errors(browser)

    browser.refresh()
    wait_for(lambda: js(browser, "return document.querySelectorAll('.message').length") == 2, 20,
             what="the conversation after a reload")
    titles = [e.text for e in browser.find_elements("css selector", ".conversation-title")]
    assert titles == ["Write a short poem about the sea."]
    assert last_answer(browser)["text"] == final["text"]
    stored = json.loads(js(browser, "return localStorage.getItem('lm.conversations')"))
    assert stored[0]["messages"][0] == {"role": "user", "content": "Write a short poem about the sea."}
    assert stored[0]["model"] == MODEL and stored[0]["options"] == {"temperature": 0, "num_predict": 96}


@needs_browser
def test_model_html_never_runs_as_markup(chat_daemon, browser):
    open_page(browser, chat_daemon)
    hostile = ("**bold** and `code`\n\n<img src=x onerror=\"window.hit=1\"><script>window.hit=2</script>"
               "\n\n[link](javascript:window.hit=3)\n\n```python\nprint('<b>x</b>')\n```")
    conv = {"id": "c1", "title": "hostile", "model": MODEL, "system": "", "options": {}, "think": "",
            "created": "2026-01-01T00:00:00Z", "updated": "2026-01-01T00:00:00Z",
            "messages": [{"role": "user", "content": "<b>hi</b>"},
                         {"role": "assistant", "content": hostile, "thinking": "<i>hmm</i>",
                          "stats": {"evalCount": 10, "evalDuration": 5e8}, "ttftMs": 120}]}
    js(browser, "localStorage.setItem('lm.conversations', arguments[0])", json.dumps([conv]))
    browser.refresh()
    wait_for(lambda: js(browser, "return document.querySelectorAll('.message').length") == 2, 20, what="messages")
    body = browser.find_element("css selector", ".message.assistant .body")
    assert body.find_elements("css selector", "strong")[0].text == "bold"
    assert body.find_elements("css selector", "pre code")[0].text == "print('<b>x</b>')"
    assert len(body.find_elements("css selector", "pre button.copy-code")) == 1
    assert not body.find_elements("css selector", "img, script")
    assert "<script>window.hit=2</script>" in body.text  # shown as text
    assert all(not (a.get_attribute("href") or "").startswith("javascript:")
               for a in body.find_elements("css selector", "a"))
    assert js(browser, "return window.hit") is None
    user = browser.find_element("css selector", ".message.user .body")
    assert user.text == "<b>hi</b>" and not user.find_elements("css selector", "b")
    thinking = browser.find_element("css selector", ".message.assistant details.thinking")
    assert thinking.get_attribute("open") is None  # collapsed until clicked
    thinking.click()
    assert thinking.find_element("css selector", ".thinking-text").text == "<i>hmm</i>"
    meta = browser.find_element("css selector", ".message.assistant .meta").text
    assert "20.0 tokens/s" in meta and "first token 120 ms" in meta


@needs_browser
def test_stop_cancels_the_generation_and_frees_the_slot(chat_daemon, browser):
    open_page(browser, chat_daemon)
    send(browser, "Count from 1 to 2000, one number per line.", temperature=0, num_predict=4000)
    wait_for(lambda: (a := last_answer(browser)) and len(a["text"]) > 8, 120, what="the answer to start")
    assert wait_for(lambda: metric(chat_daemon, "lm_requests_active", f'{{model="{MODEL}"}}') == 1, 10,
                    what="the slot to be busy")
    by_id(browser, "stop").click()
    stopped = wait_for(lambda: (a := last_answer(browser)) and not a["streaming"] and a, 10, what="stop")
    assert "stopped" in stopped["meta"] and "tokens/s" not in stopped["meta"]
    # On the server: the request was cancelled, not left to run to its 4000 tokens.
    wait_for(lambda: metric(chat_daemon, "lm_requests_active", f'{{model="{MODEL}"}}') == 0, 10,
             what="lm_requests_active to drop to 0")
    wait_for(lambda: metric(chat_daemon, "lm_http_requests_in_flight") == 1, 10,  # this /metrics call only
             what="the cancelled /api/chat to end")
    ps = chat_daemon.get("/api/ps")[1]["models"]
    assert [m["name"] for m in ps] == [MODEL] and not ps[0]["expires_at"].startswith("2318")  # idle, expiring
    time.sleep(1)
    assert last_answer(browser)["text"] == stopped["text"]  # nothing more arrives
    # The one slot is free: another answer runs at once.
    status, body = chat_daemon.post("/api/chat", {"model": MODEL, "stream": False, "options": {"num_predict": 4},
                                                  "messages": [{"role": "user", "content": "hi"}]}, timeout=60)
    assert status == 200 and body["done"]


@pytest.fixture
def pushed_model(chat_daemon, registry, tmp_path):  # noqa: F811
    """A 28 MiB GGUF pushed to the test's own registry, served through a throttled proxy (so a pull
    takes a few seconds), and not in the daemon's store."""
    gguf = write_tiny_gguf(tmp_path / "pullme.gguf", n_layer=4, n_embd=384, n_ff=1024, seed=7, name="pullme")
    name = f"{registry.host}/ui/pullme:latest"
    chat_daemon.create_from_gguf(name, gguf)
    assert chat_daemon.post("/api/push", {"model": name, "insecure": True, "stream": False})[0] == 200
    assert chat_daemon.request("DELETE", "/api/delete", {"model": name})[0] == 200
    proxy = Proxy(registry.host, rate=8 * MiB).start()
    yield f"{proxy.host}/ui/pullme:latest", gguf.stat().st_size
    proxy.stop()


@needs_browser
@needs_registry
def test_pull_shows_progress_then_delete(chat_daemon, browser, pushed_model):
    name, size = pushed_model
    open_page(browser, chat_daemon)
    by_id(browser, "tab-models").click()
    wait_for(lambda: browser.find_elements("css selector", f'#installed-rows tr[data-model="{MODEL}"]'), 20,
             what="the installed list")
    row = browser.find_element("css selector", f'#installed-rows tr[data-model="{MODEL}"]').text
    assert "smollm2" in row and "Q4_1" in row and "8,192" in row and "completion" in row, row
    by_id(browser, "pull-name").send_keys(name)
    by_id(browser, "pull-insecure").click()

    by_id(browser, "pull-start").click()  # cancelled midway: nothing is added to the store
    wait_for(lambda: js(browser, "return document.getElementById('pull-progress').value") > 0, 30,
             what="the pull to start")
    by_id(browser, "pull-cancel").click()
    wait_for(lambda: "cancelled" in by_id(browser, "pull-status").text, 10, what="the cancel")
    assert name not in [m["name"] for m in chat_daemon.get("/api/tags")[1]["models"]]

    by_id(browser, "pull-start").click()
    samples = []
    while True:
        state = js(browser, "const b = document.getElementById('pull-progress'); return {value: b.value, "
                            "max: b.max, busy: !document.getElementById('pull-cancel').hidden, "
                            "status: document.getElementById('pull-status').textContent}")
        if state["busy"]:
            samples.append((state["value"], state["max"]))
        elif samples:
            break
        time.sleep(0.05)
    partial = {v for v, m in samples if m >= size and 0 < v < m}
    assert len(partial) >= 2, f"the progress bar did not move: {samples[:5]}...{samples[-5:]}"
    assert state["status"] == f"Pulled {name}", state
    assert state["value"] == state["max"] >= size
    wait_for(lambda: browser.find_elements("css selector", f'#installed-rows tr[data-model="{name}"]'), 10,
             what="the pulled model in the list")
    assert name in [m["name"] for m in chat_daemon.get("/api/tags")[1]["models"]]

    click_row_button(browser, "installed", name, "Delete")
    alert = wait_for(lambda: browser.switch_to.alert, 5, what="the confirmation")
    assert "Delete " + name in alert.text
    alert.accept()
    wait_for(lambda: not browser.find_elements("css selector", f'#installed-rows tr[data-model="{name}"]'), 10,
             what="the row to go")
    assert name not in [m["name"] for m in chat_daemon.get("/api/tags")[1]["models"]]


@needs_browser
def test_wrong_api_key_gets_a_clear_message(tmp_path, browser, smollm2_path):
    d = Daemon(tmp_path / "models", {"LM_API_KEYS": KEY}).start()
    try:
        d.env["LM_API_KEY"] = KEY
        create_bundled(d, MODEL, smollm2_path)
        browser.get(d.url + "/")
        wait_for(lambda: by_id(browser, "key-dialog").get_attribute("open") is not None, 20, what="the key dialog")
        assert "needs an API key" in by_id(browser, "key-reason").text
        by_id(browser, "key-input").send_keys("not-the-key")
        by_id(browser, "key-save").click()
        reason = wait_for(lambda: "refused" in (t := by_id(browser, "key-reason").text) and t, 20,
                          what="the refusal")
        assert "The server refused this API key (unauthorized: invalid API key)" in reason
        assert by_id(browser, "key-dialog").get_attribute("open") is not None
        assert "API key refused" in by_id(browser, "banner").text
        by_id(browser, "key-input").send_keys(KEY)
        by_id(browser, "key-save").click()
        wait_for(lambda: js(browser, "return [...document.querySelectorAll('#model-select option')].some("
                                     "o => o.value === arguments[0])", MODEL), 20, what="the models with the key")
        assert by_id(browser, "banner").get_attribute("hidden") is not None
        assert js(browser, "return localStorage.getItem('lm.apiKey')") == KEY
    finally:
        d.stop()


def store_names(d: Daemon) -> list[str]:
    return [m["name"] for m in d.get("/api/tags")[1]["models"]]


@needs_browser
def test_create_copy_and_unload(chat_daemon, browser):
    assert chat_daemon.post("/api/generate", {"model": MODEL})[0] == 200  # loaded, for the Unload button
    open_page(browser, chat_daemon)
    by_id(browser, "tab-models").click()
    wait_for(lambda: browser.find_elements("css selector", f'#running-rows tr[data-model="{MODEL}"]'), 20,
             what="the running model")
    running = browser.find_element("css selector", f'#running-rows tr[data-model="{MODEL}"]')
    assert "CPU" in running.text and "MB" in running.text
    click_row_button(browser, "running", MODEL, "Unload")
    wait_for(lambda: by_id(browser, "running-empty").is_displayed(), 20, what="the unload")
    assert chat_daemon.get("/api/ps")[1]["models"] == []

    by_id(browser, "create-name").send_keys("ui-pirate")
    by_id(browser, "create-modelfile").send_keys(
        f'FROM {MODEL}\nPARAMETER temperature 0.3\nPARAMETER stop "<|im_end|>"\nSYSTEM """You are a pirate.\n'
        'Say arr."""\n')
    by_id(browser, "create-start").click()
    wait_for(lambda: by_id(browser, "create-status").text == "Created ui-pirate", 30, what="the create")
    shown = chat_daemon.post("/api/show", {"model": "ui-pirate"})[1]
    assert shown["system"] == "You are a pirate.\nSay arr."
    assert "temperature" in shown["parameters"] and "<|im_end|>" in shown["parameters"]

    by_id(browser, "create-modelfile").clear()
    by_id(browser, "create-modelfile").send_keys("FROM nothing-here:latest\n")
    by_id(browser, "create-start").click()
    wait_for(lambda: by_id(browser, "create-status").text.startswith("Create failed:"), 30, what="the refusal")
    by_id(browser, "create-modelfile").clear()
    by_id(browser, "create-modelfile").send_keys("PARAMETER temperature 1\n")
    by_id(browser, "create-start").click()
    assert "needs a FROM line" in by_id(browser, "create-status").text

    click_row_button(browser, "installed", "ui-pirate:latest", "Copy")
    alert = wait_for(lambda: browser.switch_to.alert, 5, what="the copy prompt")
    alert.send_keys("ui-parrot")
    alert.accept()
    wait_for(lambda: browser.find_elements("css selector", '#installed-rows tr[data-model="ui-parrot:latest"]'), 10,
             what="the copy's row")
    assert {"ui-pirate:latest", "ui-parrot:latest"} <= set(store_names(chat_daemon))
    for name in ("ui-pirate", "ui-parrot"):
        assert chat_daemon.request("DELETE", "/api/delete", {"model": name})[0] == 200


def conversation_action(driver, index: int, action: str) -> None:
    """Hovers over a conversation (its buttons show on hover, as for a person) and clicks one."""
    from selenium.webdriver import ActionChains

    item = driver.find_elements("css selector", ".conversation")[index]
    ActionChains(driver).move_to_element(item).perform()
    item.find_element("xpath", f".//button[text()='{action}']").click()


@needs_browser
def test_conversations_rename_and_delete(chat_daemon, browser):
    open_page(browser, chat_daemon)
    convs = [{"id": f"c{i}", "title": f"chat {i}", "model": MODEL, "system": "", "options": {}, "think": "",
              "created": "2026-01-01T00:00:00Z", "updated": "2026-01-01T00:00:00Z",
              "messages": [{"role": "user", "content": f"question {i}"}]} for i in (1, 2)]
    js(browser, "localStorage.setItem('lm.conversations', arguments[0])", json.dumps(convs))
    browser.refresh()

    def titles():
        return [e.text for e in browser.find_elements("css selector", ".conversation-title")]

    wait_for(lambda: titles() == ["chat 1", "chat 2"], 20, what="the list")
    conversation_action(browser, 1, "Rename")
    alert = wait_for(lambda: browser.switch_to.alert, 5, what="the rename prompt")
    alert.send_keys("renamed")
    alert.accept()
    wait_for(lambda: titles() == ["chat 1", "renamed"], 5, what="the new title")
    conversation_action(browser, 0, "Delete")
    wait_for(lambda: browser.switch_to.alert, 5, what="the confirmation").accept()
    wait_for(lambda: titles() == ["renamed"], 5, what="the deletion")
    assert browser.find_element("css selector", ".message.user .body").text == "question 2"
    stored = json.loads(js(browser, "return localStorage.getItem('lm.conversations')"))
    assert [(c["id"], c["title"]) for c in stored] == [("c2", "renamed")]
