"""graft serve over real HTTP on 127.0.0.1: answers, refusals (4xx JSON) and serving on after them."""
from __future__ import annotations

import json
import socket
import struct
import threading
import time
import zlib
from pathlib import Path

import numpy as np
import pytest

from .conftest import graft

httpx = pytest.importorskip("httpx")
uvicorn = pytest.importorskip("uvicorn")
pytest.importorskip("fastapi")
pytest.importorskip("multipart")


def start_server(app) -> tuple[str, "uvicorn.Server", threading.Thread]:
    """uvicorn in a thread on a free port of 127.0.0.1; returns once it accepts connections."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("the test server did not start")
        time.sleep(0.02)
    return f"http://127.0.0.1:{sock.getsockname()[1]}", server, thread


@pytest.fixture(scope="module")
def server(session_run):
    from graftkit.serve import build_app, load_predictor

    url, srv, thread = start_server(build_app(load_predictor(session_run)))
    yield url
    srv.should_exit = True
    thread.join(30)


def val_images(run: Path) -> list[Path]:
    return sorted((Path(json.loads((run / "config.json").read_text())["data_dir"]) / "val").rglob("*.png"))


def png_header(width: int, height: int) -> bytes:
    """A valid PNG signature and header declaring ``width`` x ``height`` pixels, with a tiny body."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)) +
            chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b""))


def post_images(url: str, *files: tuple[str, bytes, str], **params) -> "httpx.Response":
    return httpx.post(f"{url}/predict", files=[("files", f) for f in files], params=params, timeout=60)


def test_predict_over_http_matches_load_predict(server, session_run):
    import graftkit

    paths = val_images(session_run)[:3]
    response = post_images(server, *[(p.name, p.read_bytes(), "image/png") for p in paths], top_k=3)
    assert response.status_code == 200, response.text
    answers = response.json()["predictions"]
    expected = graftkit.load(session_run).predict(paths, top_k=3)
    assert [a["filename"] for a in answers] == [p.name for p in paths]
    for answer, want in zip(answers, expected):
        assert answer["predicted_class"] == want.top[0][0]
        assert answer["probability"] == pytest.approx(want.probability, abs=1e-5)
        assert [t["class"] for t in answer["top"]] == [c for c, _ in want.top]
        assert answer["unknown"]["score"] == pytest.approx(want.unknown_score)
        assert answer["unknown"]["is_unknown"] == want.is_unknown


def test_an_exported_onnx_model_is_served_like_its_run_folder(session_run, tmp_path):
    """`graft serve model.onnx`: the same answers as the run folder, on onnxruntime; no Grad-CAM and no
    unknown detector there (the training features stay in the run folder), said in /model."""
    pytest.importorskip("onnxruntime")
    import graftkit
    from graftkit.export.api import export_model
    from graftkit.serve import build_app, load_predictor

    exported = tmp_path / "model.onnx"
    export_model(session_run, "onnx", exported)
    url, srv, thread = start_server(build_app(load_predictor(exported)))
    try:
        paths = val_images(session_run)[:3]
        answers = post_images(url, *[(p.name, p.read_bytes(), "image/png") for p in paths], top_k=2).json()
        explained = post_images(url, (paths[0].name, paths[0].read_bytes(), "image/png"), explain="true").json()
        model = httpx.get(f"{url}/model").json()
    finally:
        srv.should_exit = True
        thread.join(30)
    expected = graftkit.load(session_run).predict(paths, top_k=2)
    for answer, want in zip(answers["predictions"], expected):
        assert answer["predicted_class"] == want.top[0][0]
        assert answer["probability"] == pytest.approx(want.probability, abs=1e-4)
    classes = json.loads((session_run / "model.json").read_text())["classes"]
    assert model["kind"] == "onnx" and model["unknown"] is None and model["classes"] == classes
    assert not explained["predictions"][0].get("heatmap")


def test_health_model_docs_and_page(server, session_run):
    assert httpx.get(f"{server}/health").json()["status"] == "ok"
    model = httpx.get(f"{server}/model").json()
    meta = json.loads((session_run / "model.json").read_text())
    assert model["classes"] == meta["classes"] and model["backbone"] == "tiny_cnn"
    assert model["calibration"]["temperature"] == meta["calibration"]["temperature"]
    assert "val_accuracy" in model["metrics"]
    assert "/predict" in httpx.get(f"{server}/openapi.json").json()["paths"]
    assert httpx.get(f"{server}/docs").status_code == 200
    page = httpx.get(f"{server}/").text
    assert 'id="file"' in page and "/predict" in page and "<script src" not in page  # no CDN, no build step


def test_explain_returns_a_gradcam_png(server, session_run):
    path = val_images(session_run)[0]
    answer = post_images(server, (path.name, path.read_bytes(), "image/png"), explain="true").json()["predictions"][0]
    assert answer["heatmap"].startswith("data:image/png;base64,")


BAD_INPUTS = {
    "pixel bomb": (lambda: {"files": [("files", ("bomb.png", png_header(50_000, 50_000), "image/png"))]},
                   413, "too many pixels"),
    "text file": (lambda: {"files": [("files", ("notes.txt", b"hello, not an image\n", "text/plain"))]},
                  415, "'notes.txt' was sent as text/plain"),
    "text named .png": (lambda: {"files": [("files", ("notes.png", b"hello, not an image\n", "image/png"))]},
                        415, "'notes.png' is not an image"),
    "0-byte upload": (lambda: {"files": [("files", ("empty.jpg", b"", "image/jpeg"))]}, 400, "'empty.jpg' is empty"),
    "100 MB body": (lambda: {"content": bytes(100_000_000),
                             "headers": {"content-type": "multipart/form-data; boundary=x"}},
                    413, "request body over the limit of 20 MB"),
    "JSON body": (lambda: {"content": b"{}", "headers": {"content-type": "application/json"}},
                  415, "takes multipart/form-data"),
    "too many images": (lambda: {"files": [("files", (f"{i}.png", png_header(8, 8), "image/png")) for i in range(17)]},
                        413, "17 images in one request; the limit is 16"),
}


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_input_gets_a_clear_4xx_and_the_next_request_succeeds(server, session_run, case):
    make, status, message = BAD_INPUTS[case]
    response = httpx.post(f"{server}/predict", timeout=120, **make())
    assert response.status_code == status, response.text
    assert message in response.json()["error"]
    good = val_images(session_run)[0]
    after = post_images(server, (good.name, good.read_bytes(), "image/png"))
    assert after.status_code == 200 and after.json()["predictions"][0]["predicted_class"]


def test_concurrent_requests_share_forward_passes(session_run):
    """With batching, requests sent together are answered from fewer forward passes than requests,
    each with its own rows; without it, one pass per request."""
    from concurrent.futures import ThreadPoolExecutor

    from graftkit.serve import build_app, load_predictor

    paths = val_images(session_run)[:8]
    for batching in (True, False):
        url, srv, thread = start_server(build_app(load_predictor(session_run), batching=batching, max_wait=0.2))
        try:
            with ThreadPoolExecutor(8) as pool:
                answers = list(pool.map(lambda p: post_images(url, (p.name, p.read_bytes(), "image/png")).json(), paths))
            health = httpx.get(f"{url}/health").json()
        finally:
            srv.should_exit = True
            thread.join(30)
        assert [a["predictions"][0]["filename"] for a in answers] == [p.name for p in paths]
        if batching:
            assert health["forward_passes"] < len(paths) and health["mean_batch"] > 1
        else:
            assert health["batching"] is False


def test_serve_without_fastapi_gives_the_install_hint(monkeypatch, session_run):
    import builtins

    real_import = builtins.__import__

    def no_uvicorn(name, *args, **kwargs):
        if name == "uvicorn":
            raise ImportError("No module named 'uvicorn'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_uvicorn)
    result = graft("serve", str(session_run))
    assert result.returncode == 2 and 'pip install "graftkit[serve]"' in result.stderr


def test_scores_on_the_server_match_the_ood_module(session_run):
    """The server scores with graftkit.ood on the predictor's features (what an ONNX predictor returns too)."""
    from graftkit.data.decoded import decode_square
    from graftkit.serve import load_predictor

    predictor = load_predictor(session_run)
    path = val_images(session_run)[0]
    probs, features = predictor.predict([decode_square(path.read_bytes(), predictor.decode_size)])
    assert probs.shape == (1, len(predictor.classes)) and np.isclose(probs.sum(), 1, atol=1e-5)
    assert features.shape[1] == predictor.ood.bank.shape[1]
