"""The dashboard in a real headless Chromium: it loads offline (vendored JavaScript,
no tiles), shows one marker per sensor coloured by CAQI, and a click on a marker
draws that sensor's readings with the forecast ahead of them."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from aircast.settings import Settings

from .test_serve_api import RAY_SERVE_WARNINGS, App, seed, serve_settings

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")

pytestmark = [pytest.mark.browser, pytest.mark.slow, RAY_SERVE_WARNINGS]


@pytest.fixture(scope="module")
def app(ray_session: Settings, tmp_path_factory: pytest.TempPathFactory) -> Iterator[App]:
    from ray import serve

    from serve.deploy import deploy

    settings = serve_settings(ray_session, tmp_path_factory.mktemp("registry"))
    seeded = seed(settings)
    urls = deploy(settings)
    try:
        yield App(settings, urls.base, seeded)
    finally:
        serve.shutdown()


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[object]:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    assert CHROMIUM.exists() and CHROMEDRIVER.exists(), "make setup installs chromium"
    profile = tmp_path_factory.mktemp("chromium-profile")
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in (
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        "--window-size=1280,900",
        f"--user-data-dir={profile}",
    ):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
    driver.set_page_load_timeout(60)
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


def test_dashboard_map_marker_click_shows_chart_with_forecast(app: App, browser: object) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.remote.webdriver import WebDriver
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    assert isinstance(browser, WebDriver)
    browser.get(f"{app.url}/")  # redirects to /ui/
    wait = WebDriverWait(browser, 60)
    wait.until(lambda d: d.find_element(By.TAG_NAME, "body").get_attribute("data-sensors"))
    # Sensors 101, 102 and 201 have raw readings in the last day; 301/401 only aggregates.
    markers = browser.find_elements(By.CSS_SELECTOR, "path.sensor-marker")
    assert {m.get_attribute("data-sensor") for m in markers} == {"101", "102", "201"}
    fills = {m.get_attribute("data-sensor"): m.get_attribute("fill") for m in markers}
    assert fills["101"] == "#bbcf4c"  # CAQI 30: "low"
    assert fills["201"] == "#79bc6a"  # CAQI 8: "very low"
    assert fills["102"] == "#9aa0a6"  # humidity only: no index
    assert "3 sensors" in browser.find_element(By.ID, "status").text

    marker = next(m for m in markers if m.get_attribute("data-sensor") == "101")
    # SVG paths: a real click event through the page's own dispatch.
    browser.execute_script(
        "arguments[0].dispatchEvent(new MouseEvent('click', {bubbles: true}))", marker
    )
    wait.until(ec.text_to_be_present_in_element((By.ID, "title"), "Sensor 101"))
    chart = browser.find_element(By.ID, "chart")

    def drawn(measure: str) -> bool:
        ready = chart.get_attribute("data-ready") == "1"
        return ready and chart.get_attribute("data-measure") == measure

    # PM2.5 first: readings, but no aggregates to forecast from (the panel says so).
    wait.until(lambda d: drawn("P2"))
    assert browser.find_elements(By.CSS_SELECTOR, "#chart .uplot canvas")
    assert int(chart.get_attribute("data-points") or 0) == 12  # raw fallback
    assert "no forecast (404" in browser.find_element(By.ID, "forecast-note").text
    assert "humidity_above_70" in browser.find_element(By.ID, "aqi").text
    # PM10: 10-minute means with the persistence forecast ahead of them.
    browser.find_element(By.CSS_SELECTOR, "#measures button[data-measure='P1']").click()
    wait.until(lambda d: drawn("P1"))
    assert int(chart.get_attribute("data-points") or 0) > 12
    assert int(chart.get_attribute("data-forecast") or 0) == len(app.settings.train.horizons)
    assert "persistence" in browser.find_element(By.ID, "forecast-note").text
    # Only the deliberate 404 of the P2 forecast may show up in the console.
    severe = [
        e
        for e in browser.get_log("browser")
        if e.get("level") == "SEVERE" and "forecast?measure=P2" not in e.get("message", "")
    ]
    assert severe == []
