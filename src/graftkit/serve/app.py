"""The FastAPI application: ``POST /predict``, ``GET /health``, ``GET /model``, the page at ``/``.

Every refusal is a 4xx JSON ``{"error": "..."}`` that names the file and the limit, and the server
goes on serving. The body size is checked from ``Content-Length`` (and counted while reading, for a
chunked body) before the body is parsed; the pixel count from the image header before any pixel
is decoded.
"""

import asyncio
import base64
import contextlib
import json
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from importlib import resources
from typing import Any, Sequence

import numpy as np

from .._version import __version__
from ..data.decoded import decode_square
from ..data.images import PIL_ERRORS, TooManyPixels, UnreadableImage, check_image_header
from .batching import Batcher
from .predictor import Predictor


@dataclass(frozen=True)
class Limits:
    max_body_bytes: int = 20_000_000     # the whole request
    max_pixels: int = 40_000_000         # per image, from its header (a 12 MP photo is fine)
    max_images: int = 16                 # per request
    max_drain_bytes: int = 1 << 30       # an over-long body is read and dropped up to this, so the
                                         # client gets the 413 instead of a reset connection


class RequestRefused(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status, self.message = status, message


ALLOWED_PART_TYPES = ("image/", "application/octet-stream")


def build_app(predictor: Predictor, limits: Limits = Limits(), batching: bool = True, max_batch: int = 32,
              max_wait: float = 0.01):
    """The ASGI app serving ``predictor`` (a :class:`~graftkit.serve.predictor.Predictor`)."""
    from fastapi import FastAPI, File, Query, UploadFile
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import HTMLResponse, JSONResponse

    executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="graftkit-model")  # one model, one thread
    batcher = Batcher(predictor.predict, executor, max_batch, max_wait) if batching else None

    @contextlib.asynccontextmanager
    async def lifespan(_app):
        if batcher is not None:
            batcher.start()
        yield
        if batcher is not None:
            await batcher.stop()
        executor.shutdown(wait=False, cancel_futures=True)

    app = FastAPI(title="graftkit model server", version=__version__, lifespan=lifespan,
                  description=f"Image classifier ({predictor.kind}): {len(predictor.classes)} classes. "
                              f"POST images to /predict; the page at / does it in a browser.")

    @app.exception_handler(RequestRefused)
    async def refused(_request, exc: RequestRefused):
        return JSONResponse({"error": exc.message}, status_code=exc.status)

    @app.exception_handler(RequestValidationError)
    async def invalid(_request, exc: RequestValidationError):
        first = exc.errors()[0] if exc.errors() else {}
        where = ".".join(str(p) for p in first.get("loc", ()))
        return JSONResponse({"error": f"bad request: {where}: {first.get('msg', 'invalid')}. Send images as "
                                      f"multipart/form-data fields named 'files'."}, status_code=422)

    pass_sizes = batcher.batch_sizes if batcher is not None else []  # images per forward pass

    async def run_model(squares: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        if batcher is not None:
            return await batcher.submit(squares)
        pass_sizes.append(len(squares))
        return await asyncio.get_running_loop().run_in_executor(executor, predictor.predict, squares)

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def page() -> str:
        return resources.files(__package__).joinpath("page.html").read_text(encoding="utf-8")

    @app.get("/health")
    async def health() -> dict[str, Any]:
        """Liveness: ``{"status": "ok"}``, and how many images went into each forward pass so far."""
        return {"status": "ok", "batching": batcher is not None, "forward_passes": len(pass_sizes),
                "mean_batch": float(np.mean(pass_sizes)) if pass_sizes else None}

    @app.get("/model")
    async def model() -> dict[str, Any]:
        """Classes, backbone, validation metrics, calibration and the unknown threshold; the limits."""
        return {**predictor.info(), "limits": {"max_body_bytes": limits.max_body_bytes,
                                               "max_pixels": limits.max_pixels, "max_images": limits.max_images}}

    @app.post("/predict")
    async def predict(files: list[UploadFile] = File(..., description="One or several images (JPEG, PNG, ...)."),
                      top_k: int = Query(5, ge=1, le=1000, description="Classes listed per image."),
                      explain: bool = Query(False, description="Add a Grad-CAM heat-map (PNG data URI) of the "
                                                               "top class, for a PyTorch model.")) -> dict[str, Any]:
        """Classify images: the top classes with calibrated probabilities, and the "unknown" verdict."""
        if len(files) > limits.max_images:
            raise RequestRefused(413, f"{len(files)} images in one request; the limit is {limits.max_images}. "
                                      f"Split them over several requests.")
        uploads = [(f.filename or f"file {i + 1}", f.content_type or "", await f.read()) for i, f in enumerate(files)]
        squares = await asyncio.get_running_loop().run_in_executor(
            None, decode_uploads, uploads, predictor.decode_size, limits.max_pixels)
        probs, features = await run_model(squares)
        scores = predictor.ood.score(features) if predictor.ood is not None else None
        out = [describe(predictor, name, p, None if scores is None else float(scores[i]), top_k)
               for i, ((name, _, _), p) in enumerate(zip(uploads, probs))]
        if explain:
            for item, square, p in zip(out, squares, probs):
                png = await asyncio.get_running_loop().run_in_executor(executor, predictor.explain, square,
                                                                       int(np.argmax(p)))
                item["heatmap"] = None if png is None else "data:image/png;base64," + base64.b64encode(png).decode()
        return {"predictions": out}

    return BodyLimit(app, limits)


def describe(predictor: Predictor, name: str, probs: np.ndarray, score: float | None, top_k: int) -> dict[str, Any]:
    """One image's answer: ``class`` is ``"unknown"`` when the detector flags it (``predicted_class``
    is the model's best class either way)."""
    order = np.argsort(-probs)[:top_k]
    unknown = None if score is None else bool(score < predictor.ood.threshold)
    best = predictor.classes[int(order[0])]
    return {"filename": name, "class": "unknown" if unknown else best, "predicted_class": best,
            "probability": float(probs[order[0]]),
            "top": [{"class": predictor.classes[int(j)], "probability": float(probs[j])} for j in order],
            "unknown": None if score is None else {"is_unknown": unknown, "score": score,
                                                   "threshold": predictor.ood.threshold}}


def decode_uploads(uploads: Sequence[tuple[str, str, bytes]], size: int, max_pixels: int) -> list[np.ndarray]:
    """Check and decode every upload as training decodes images, or refuse the request naming the file."""
    squares = []
    for name, content_type, data in uploads:
        if content_type and not content_type.startswith(ALLOWED_PART_TYPES):
            raise RequestRefused(415, f"'{name}' was sent as {content_type}; send images (image/jpeg, "
                                      f"image/png, ...).")
        if not data:
            raise RequestRefused(400, f"'{name}' is empty (0 bytes). Send the image's bytes.")
        try:
            check_image_header(data, max_pixels)
            squares.append(decode_square(data, size))
        except TooManyPixels as exc:
            raise RequestRefused(413, f"'{name}': {exc}. Send a smaller image.") from None
        except UnreadableImage as exc:
            raise RequestRefused(400, f"'{name}': {exc}.") from None
        except PIL_ERRORS as exc:
            from PIL import UnidentifiedImageError

            if isinstance(exc, UnidentifiedImageError):
                raise RequestRefused(415, f"'{name}' is not an image Pillow can read (JPEG, PNG, WebP, BMP, "
                                          f"GIF, TIFF ...).") from None
            raise RequestRefused(400, f"'{name}' cannot be decoded ({str(exc)[:80] or type(exc).__name__}).") from None
    return squares


class BodyLimit:
    """ASGI middleware: refuse a body over ``limits.max_body_bytes`` with 413 before the app parses
    it (from Content-Length, else counted as it arrives), and a POST that is not multipart/form-data
    with 415; the rest of a refused body is read and dropped so the client reads the answer."""

    def __init__(self, app, limits: Limits) -> None:
        self.app, self.limits = app, limits

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http" or scope["method"] != "POST":
            return await self.app(scope, receive, send)
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        limit = self.limits.max_body_bytes
        too_big = f"request body over the limit of {limit / 1e6:g} MB: send fewer or smaller images"
        if not headers.get("content-type", "").lower().startswith("multipart/form-data"):
            return await self._refuse(send, receive, 415, f"POST {scope['path']} takes multipart/form-data (image "
                                      f"files in fields named 'files'), not "
                                      f"'{headers.get('content-type', 'no content type')}'.")
        declared = headers.get("content-length")
        if declared is not None:
            if not declared.isdigit():
                return await self._refuse(send, receive, 400, f"bad Content-Length header {declared[:20]!r}.")
            if int(declared) > limit:
                return await self._refuse(send, receive, 413, too_big + f" (Content-Length {int(declared):,} bytes).")
        chunks, total = [], 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunks.append(message.get("body", b""))
            total += len(chunks[-1])
            if total > limit:
                return await self._refuse(send, receive, 413, too_big + ".")
            if not message.get("more_body", False):
                break
        body, replayed = b"".join(chunks), False

        async def replay():
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)

    async def _refuse(self, send, receive, status: int, message: str) -> None:
        body = json.dumps({"error": message}).encode()
        await send({"type": "http.response.start", "status": status,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
        # No "Connection: close": uvicorn would close the socket at once while the client is still
        # sending, and the client would see a reset instead of this answer. The body is drained instead.
        await send({"type": "http.response.body", "body": body})
        drained = 0
        while drained <= self.limits.max_drain_bytes:
            message = await receive()
            if message["type"] == "http.disconnect" or not message.get("more_body", False):
                break
            drained += len(message.get("body", b""))
