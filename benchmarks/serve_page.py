"""Drive graft serve's page in headless Chromium: pick an image, read the answer, save a screenshot.

Starts the server in this process (uvicorn on a free port of 127.0.0.1), opens ``/`` in Debian's
headless Chromium through Selenium and chromedriver (``apt-get install chromium chromium-driver``,
``pip install selenium``; no browser is downloaded), puts the image into the page's file input,
waits for the answer and prints the class the page shows next to ``graftkit.load(run).predict``'s.

    python benchmarks/serve_page.py RUN_DIR IMAGE [--screenshot docs/serve-page.png]
"""
from __future__ import annotations

import argparse
import json
import shutil
import socket
import threading
import time
from pathlib import Path

CHROMIUM = "/usr/bin/chromium"


def find_chromium() -> tuple[str, str] | None:
    """(browser, driver) paths, or None when either is missing."""
    browser = shutil.which("chromium") or (CHROMIUM if Path(CHROMIUM).exists() else None)
    driver = shutil.which("chromedriver")
    return (browser, driver) if browser and driver else None


def start_server(run_dir: Path):
    import uvicorn

    from graftkit.serve import build_app, load_predictor

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(build_app(load_predictor(run_dir)), log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not server.started and time.monotonic() < deadline and thread.is_alive():
        time.sleep(0.05)
    if not server.started:
        raise RuntimeError("the server did not start")
    return f"http://127.0.0.1:{sock.getsockname()[1]}", server, thread


def drive_page(url: str, image: Path, screenshot: Path | None = None, timeout: float = 120) -> dict:
    """Open the page, upload ``image``, wait for the answer; return what the page shows."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    browser, driver_path = find_chromium()
    options = webdriver.ChromeOptions()
    options.binary_location = browser
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                 "--window-size=900,640", "--no-first-run", "--disable-extensions"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(driver_path), options=options)
    try:
        driver.set_page_load_timeout(timeout)
        driver.get(url + "/")
        driver.find_element(By.ID, "file").send_keys(str(Path(image).resolve()))
        WebDriverWait(driver, timeout).until(
            lambda d: d.find_element(By.TAG_NAME, "body").get_attribute("data-state") in ("done", "error"))
        WebDriverWait(driver, 10).until(lambda d: "classes" in d.find_element(By.ID, "model").text)
        shown = {"state": driver.find_element(By.TAG_NAME, "body").get_attribute("data-state"),
                 "class": driver.find_element(By.ID, "result-class").text,
                 "verdict": driver.find_element(By.ID, "verdict").text,
                 "bars": [b.text.replace("\n", " ") for b in driver.find_elements(By.CSS_SELECTOR, "#bars .bar")],
                 "heatmap": bool(driver.find_element(By.ID, "heatmap").get_attribute("src")),
                 "error": driver.find_element(By.ID, "error").text}
        if screenshot is not None:
            Path(screenshot).parent.mkdir(parents=True, exist_ok=True)
            driver.save_screenshot(str(screenshot))
        return shown
    finally:
        driver.quit()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path)
    parser.add_argument("image", type=Path)
    parser.add_argument("--screenshot", type=Path, default=Path("docs/serve-page.png"))
    args = parser.parse_args()
    if find_chromium() is None:
        raise SystemExit("needs Debian's chromium and chromedriver (apt-get install chromium chromium-driver)")
    import graftkit

    url, server, thread = start_server(args.run)
    try:
        shown = drive_page(url, args.image, args.screenshot)
    finally:
        server.should_exit = True
        thread.join(30)
    expected = graftkit.load(args.run).predict(args.image, reject_unknown=True)[0]
    print(json.dumps({"page": shown, "expected_class": expected.label,
                      "expected_probability": round(expected.probability, 4)}, indent=2))
    if shown["class"] != expected.label:
        raise SystemExit(f"the page shows {shown['class']!r}, graftkit.load predicts {expected.label!r}")
    print(f"ok: the page shows {shown['class']}; screenshot → {args.screenshot}")


if __name__ == "__main__":
    main()
