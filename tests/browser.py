"""A real headless Chromium for the page's tests: Debian's `chromium` driven by its `chromedriver`
through Selenium (scripts/test.sh installs both). The binaries are named explicitly, so Selenium
Manager never tries to download a browser or a driver."""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"
MISSING = "headless Chromium: scripts/test.sh installs Debian's chromium and chromium-driver"


def have_browser() -> bool:
    return Path(CHROMIUM).exists() and Path(CHROMEDRIVER).exists()


def start_browser(width: int = 1280, height: int = 820):
    os.environ.setdefault("SE_OFFLINE", "true")  # belt and braces: Selenium Manager stays offline
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu", "--no-proxy-server",
                "--disable-extensions", "--no-first-run", f"--window-size={width},{height}",
                "--force-prefers-color-scheme=light", "--hide-scrollbars"):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(60)
    return driver


def wait_for(predicate, timeout: float = 60, interval: float = 0.05, what: str = "condition"):
    """Polls `predicate` until it returns something truthy (returned), or fails after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    last_error = None
    while time.monotonic() < deadline:
        try:
            value = predicate()
            if value:
                return value
        except Exception as exc:  # noqa: BLE001 - elements come and go while the page renders
            last_error = exc
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}" + (f" ({last_error})" if last_error else ""))


def console_errors(driver) -> list[str]:
    return [e["message"] for e in driver.get_log("browser") if e["level"] == "SEVERE"]
