"""The web page in a real headless Chromium (Debian's chromium + chromedriver, driven by Selenium): upload an
image, read the answer, move the knob slider, see the curve marker and the path shares follow. A screenshot is
saved under $DYNINFER_ARTIFACTS (default: the test's temporary folder)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("fastapi")
pytest.importorskip("selenium")
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
DRIVER = shutil.which("chromedriver")
pytestmark = [pytest.mark.skipif(not (CHROMIUM and DRIVER), reason="no chromium/chromedriver installed "
                                 "(apt-get install chromium chromium-driver)"), pytest.mark.usefixtures("one_thread")]

from dyninfer.methods import create_method  # noqa: E402
from dyninfer.policy import load_policy, save_policy  # noqa: E402
from dyninfer.serve.app import create_app, running  # noqa: E402
from dyninfer.serve.service import PolicyService, ServeConfig  # noqa: E402


@pytest.fixture(scope="module")
def browser():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for a in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu", "--window-size=1300,900"):
        opts.add_argument(a)
    driver = webdriver.Chrome(service=Service(DRIVER), options=opts)
    yield driver
    driver.quit()


def test_page_upload_slider_marker_and_shares(digits_prepared, browser, tmp_path):
    from PIL import Image
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    m = create_method("cascade", scores=("energy",), tolerance=0.02).fit(digits_prepared.calib)
    save_policy(tmp_path / "policy", m, digits_prepared.paths, class_names=digits_prepared.data.spec.class_names)
    service = PolicyService(load_policy(tmp_path / "policy"), ServeConfig())
    x = digits_prepared.data.test.x
    img = tmp_path / "digit.png"
    Image.fromarray((x[0, 0].numpy() * 255).round().astype(np.uint8)).save(img)
    expected = service.runtime(x[:1]).pred.tolist()[0]
    from selenium.common.exceptions import StaleElementReferenceException

    wait = WebDriverWait(browser, 20, ignored_exceptions=[StaleElementReferenceException])

    def text(element_id: str) -> str:  # read inside a wait: the page re-renders while it polls
        return wait.until(lambda d: d.find_element(By.ID, element_id).text or None)

    def attr(element_id: str, name: str) -> str:
        return wait.until(lambda d: d.find_element(By.ID, element_id).get_attribute(name))

    with running(create_app(service)) as url:
        browser.get(url + "/")
        wait.until(lambda d: d.find_elements(By.ID, "curve-marker"))
        browser.find_element(By.ID, "file").send_keys(str(img))
        assert text("answer-label") == service.class_names[expected]
        assert text("answer-path") in service.paths

        # move the slider to the dearest point: the marker moves and the server's knob follows
        n = len(service.curve)
        before = attr("curve-marker", "cx")
        browser.execute_script("const s = document.getElementById('knob'); s.value = s.max;"
                               "s.dispatchEvent(new Event('change'));")
        wait.until(lambda d: d.find_element(By.ID, "curve-marker").get_attribute("data-point") == str(n - 1))
        assert service.point == n - 1
        assert attr("curve-marker", "cx") != before

        # traffic at the cheapest point: the path shares on the page follow the measured shares
        browser.execute_script("const s = document.getElementById('knob'); s.value = 0;"
                               "s.dispatchEvent(new Event('change'));")
        wait.until(lambda d: d.find_element(By.ID, "curve-marker").get_attribute("data-point") == "0")
        import httpx

        httpx.post(url + "/v1/predict", json={"inputs": x[:100].tolist()}, timeout=30)
        share = service.stats.snapshot()["path_share"]
        first = service.paths[0]
        wait.until(lambda d: abs(float(d.find_element(By.ID, "share-" + first).get_attribute("data-share") or -1)
                                 - share[first]) < 0.05)
        wait.until(lambda d: "p99" in d.find_element(By.ID, "live-text").text)
        out = Path(os.environ.get("DYNINFER_ARTIFACTS", tmp_path))
        out.mkdir(parents=True, exist_ok=True)
        assert browser.save_screenshot(str(out / "serve-page.png"))
        assert (out / "serve-page.png").stat().st_size > 10_000
