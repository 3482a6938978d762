"""The page at / in headless Chromium (Debian's chromium + chromedriver, Selenium): pick an image,
read the predicted class the page shows. Skipped where the browser, its driver or Selenium is absent."""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

pytest.importorskip("uvicorn")
pytest.importorskip("selenium")
ROOT = Path(__file__).resolve().parents[1]


def load_script():
    spec = importlib.util.spec_from_file_location("serve_page", ROOT / "benchmarks" / "serve_page.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_page_shows_the_predicted_class_in_headless_chromium(session_run, tmp_path):
    import graftkit

    script = load_script()
    if script.find_chromium() is None:
        pytest.skip("chromium or chromedriver not installed (apt-get install chromium chromium-driver)")
    image = sorted((Path(json.loads((session_run / "config.json").read_text())["data_dir"]) / "val").rglob("*.png"))[0]
    url, server, thread = script.start_server(session_run)
    try:
        shown = script.drive_page(url, image, tmp_path / "page.png")
    finally:
        server.should_exit = True
        thread.join(30)
    expected = graftkit.load(session_run).predict(image, top_k=3, reject_unknown=True)[0]
    assert shown["state"] == "done" and shown["error"] == ""
    assert shown["class"] == expected.label
    assert shown["bars"][0].startswith(expected.top[0][0]) and len(shown["bars"]) == len(expected.top)
    assert shown["heatmap"] and (tmp_path / "page.png").stat().st_size > 1000
