"""The dashboard in a real browser: headless Chromium (Debian's) driven by Selenium, against
`oaksend web`, a dispatcher and a worker as real processes, the fake NewOaks API, real stores."""

from __future__ import annotations

import functools
import http.server
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support import CHATBOT, wait_until
from tests.web.conftest import PASSWORD

pytestmark = pytest.mark.slow

FAILING = "+14155550142"
OTHER = "+14155550143"
XSS = "<script>window.pwned=1</script><img src=x onerror=\"window.pwned=2\">alert"


@pytest.fixture
def other_site(tmp_path: Path) -> Iterator[Any]:
    """Another origin (a port of its own) that serves whatever page a test writes into it."""
    folder = tmp_path / "evil"
    folder.mkdir()

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Quiet, directory=str(folder)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    server.folder = folder  # type: ignore[attr-defined]
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()


def log_in(driver: Any, url: str, name: str) -> None:
    from selenium.webdriver.common.by import By

    driver.get(url + "/login")
    driver.find_element(By.NAME, "name").send_keys(name)
    driver.find_element(By.NAME, "password").send_keys(PASSWORD)
    driver.find_element(By.CSS_SELECTOR, "form.login button").click()
    wait_until(lambda: driver.current_url.rstrip("/") == url, 10, what="the overview after logging in")


def text_of(driver: Any, css: str) -> str:
    from selenium.webdriver.common.by import By

    from selenium.common.exceptions import NoSuchElementException, StaleElementReferenceException
    from selenium.webdriver.support.wait import WebDriverWait

    # A click that navigates returns before the next page is there, and live updates replace
    # elements between finding one and reading it: find and read again until both happen.
    wait = WebDriverWait(driver, 10, ignored_exceptions=(NoSuchElementException, StaleElementReferenceException))
    return str(wait.until(lambda d: (d.find_element(By.CSS_SELECTOR, css).text,))[0])


def test_an_operator_finds_a_failed_message_retries_it_and_watches_it_sent(
        make_stack: Any, sandbox: Any, producer: Any, outbox: Any, start_web: Any, browser: Any,
        screenshots: Path, other_site: Any) -> None:
    from selenium.common.exceptions import NoAlertPresentException
    from selenium.webdriver.common.by import By

    sandbox.script(FAILING, ["400"])  # a final failure first; the retry then succeeds
    make_stack()
    failing = producer.send(CHATBOT, FAILING, "Reminder: your visit is tomorrow at 10:00.")
    xss = producer.send(CHATBOT, OTHER, XSS)
    wait_until(lambda: outbox.get(failing).state == "failed" and outbox.get(xss).state == "sent", 30,
               what="the first sends")
    web = start_web({"olga": "operator", "rita": "read"})
    driver = browser

    log_in(driver, web.url, "olga")
    assert text_of(driver, ".card.state-failed .n") == "1"
    driver.find_element(By.CSS_SELECTOR, "svg.chart")
    driver.save_screenshot(str(screenshots / "overview.png"))

    # Find it by number: the number goes in a POST, the URL holds a reference only.
    driver.get(web.url + "/messages")
    driver.find_element(By.ID, "q").send_keys(FAILING)
    driver.find_element(By.CSS_SELECTOR, "#search button[type=submit]").click()
    wait_until(lambda: "f=" in driver.current_url, 10, what="the search's page")
    assert "555" not in driver.current_url
    rows = driver.find_elements(By.CSS_SELECTOR, "#messages tbody tr")
    assert len(rows) == 1 and "+1415****142" in rows[0].text and "failed" in rows[0].text
    driver.save_screenshot(str(screenshots / "messages.png"))

    # Its story, then retry with a confirmation, and watch it become sent without reloading.
    driver.find_element(By.LINK_TEXT, str(failing)).click()
    assert text_of(driver, "#state") == "failed"
    assert "400" in text_of(driver, "#attempts")
    driver.save_screenshot(str(screenshots / "story-failed.png"))
    driver.find_element(By.ID, "retry").click()
    assert text_of(driver, "#question") == "Retry 1 of 1 selected messages?"
    driver.save_screenshot(str(screenshots / "confirm.png"))
    driver.find_element(By.ID, "confirm").click()
    wait_until(lambda: driver.current_url.endswith(f"/messages/{failing}"), 10, what="the story again")
    driver.execute_script("window.stillHere = true")  # gone if the page were reloaded
    wait_until(lambda: text_of(driver, "#state") == "sent", 30, 0.2, what="the story to show it sent")
    assert driver.execute_script("return window.stillHere") is True
    assert outbox.get(failing).state == "sent" and text_of(driver, "#session")
    driver.refresh()
    assert "web:olga" in text_of(driver, "main")  # the operator action, with who did it
    driver.save_screenshot(str(screenshots / "story-sent.png"))

    # A body that is a script is shown as text and runs nothing.
    driver.get(f"{web.url}/messages/{xss}")
    assert text_of(driver, "#body") == XSS
    assert driver.execute_script("return window.pwned") is None
    with pytest.raises(NoAlertPresentException):
        driver.switch_to.alert.text  # noqa: B018 - reading it is the check

    for page in ("chatbots", "campaigns", "audit", "health"):
        driver.get(f"{web.url}/{page}")
        driver.save_screenshot(str(screenshots / f"{page}.png"))

    # A page of another site posts to the dashboard with the operator's cookie, but without the token.
    (other_site.folder / "evil.html").write_text(
        f'<form id="f" method="post" action="{web.url}/chatbots/act">'
        f'<input name="sn" value="{CHATBOT}"><input name="verb" value="pause"></form>'
        '<script>document.getElementById("f").submit()</script>')
    driver.get(f"http://127.0.0.1:{other_site.server_address[1]}/evil.html")
    wait_until(lambda: driver.current_url.startswith(web.url), 10, what="the cross-site POST to land")
    assert "refused" in text_of(driver, "#error")
    assert CHATBOT not in outbox.chatbots()

    # A read-only user sees no action, and a POST forged from their own session gets 403.
    driver.find_element(By.CSS_SELECTOR, "header form button").click()
    log_in(driver, web.url, "rita")
    driver.get(web.url + "/messages")
    assert not driver.find_elements(By.ID, "retry-selected") and not driver.find_elements(By.CSS_SELECTOR, ".pick")
    driver.get(f"{web.url}/messages/{failing}")
    assert not driver.find_elements(By.ID, "retry") and not driver.find_elements(By.ID, "reveal")
    token = driver.find_element(By.CSS_SELECTOR, "header input[name=csrf]").get_attribute("value")
    driver.execute_script(
        "const f = document.createElement('form'); f.method = 'post'; f.action = arguments[0];"
        "for (const [k, v] of Object.entries(arguments[1])) {"
        "  const i = document.createElement('input'); i.name = k; i.value = v; f.appendChild(i); }"
        "document.body.appendChild(f); f.submit();",
        f"{web.url}/messages/act", {"csrf": token, "verb": "cancel", "ids[]": str(failing), "confirmed": "1"})
    wait_until(lambda: driver.find_elements(By.ID, "error"), 10, what="the refusal")
    assert text_of(driver, "#error") == "your role does not allow this"
    assert outbox.get(failing).state == "sent"
    logs = [e for e in driver.get_log("browser") if "Content Security Policy" in e.get("message", "")]
    assert not logs, logs  # our own pages never trip their own policy
