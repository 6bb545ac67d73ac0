"""Takes README's screenshots of the page (docs/img/ui-chat.png, docs/img/ui-models.png): headless
chromium against a real daemon of its own with smollm2:135m, a short chat, then the models page.

    .venv/bin/python scripts/ui_screenshots.py [OUT_DIR]
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from tests.browser import start_browser, wait_for  # noqa: E402
from tests.conftest import Daemon, create_bundled  # noqa: E402
from tests.models import smollm2_gguf  # noqa: E402

MODEL = "smollm2:135m"


def main() -> None:
    out = Path(sys.argv[1]) if len(sys.argv) > 1 else REPO / "docs" / "img"
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="lm-shots-") as tmp:
        d = Daemon(Path(tmp) / "models").start()
        driver = None
        try:
            create_bundled(d, MODEL, smollm2_gguf())
            driver = start_browser(1200, 720)
            driver.get(d.url + "/")
            wait_for(lambda: driver.execute_script(
                "return [...document.querySelectorAll('#model-select option')].some(o => o.value === arguments[0])",
                MODEL), 30, what="the model menu")
            for text in ("What is a GGUF file? Answer in two short sentences.",
                         "Show a Python one-liner that reverses a string."):
                driver.find_element("id", "prompt").send_keys(text)
                driver.find_element("id", "send").click()
                wait_for(lambda: driver.find_element("id", "stop").get_attribute("hidden") is not None
                         and "tokens/s" in driver.find_elements("css selector", ".message.assistant .meta")[-1].text,
                         180, what="the answer")
            driver.save_screenshot(str(out / "ui-chat.png"))
            driver.find_element("id", "tab-models").click()
            wait_for(lambda: driver.find_elements("css selector", f'#running-rows tr[data-model="{MODEL}"]'), 30,
                     what="the running model")
            time.sleep(0.5)
            driver.save_screenshot(str(out / "ui-models.png"))
        finally:
            if driver is not None:
                driver.quit()
            d.stop()
    for name in ("ui-chat.png", "ui-models.png"):  # flat colours: PNGs of about 60 KB
        print(out / name, (out / name).stat().st_size, "bytes")


if __name__ == "__main__":
    main()
