"""Opening one image as RGB, whatever its mode, orientation or bit depth."""
from __future__ import annotations

import os
import stat
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".gif", ".tif", ".tiff", ".ppm", ".pgm")
MAX_FILE_BYTES = 256 * 2**20  # larger image files are skipped unread (a 100 MP JPEG is ~30 MB)
MAX_ASPECT_RATIO = 64  # longer/shorter side: beyond it the centred square is a sliver of the image

# What Pillow raises for a bad file in the ordinary way; anything else a decoder raises is wrapped in
# UnreadableImage by load_image (MemoryError excepted: that is the process, not the file).
PIL_ERRORS = (OSError, ValueError, SyntaxError, EOFError, Image.DecompressionBombWarning,
              Image.DecompressionBombError)


class UnreadableImage(ValueError):
    """A file graftkit will not decode; ``str(exc)`` is the reason listed in errors and skipped.txt."""


def read_image_file(path, max_bytes: int = MAX_FILE_BYTES) -> bytes:
    """The bytes of ``path`` if it is a regular file of at most ``max_bytes``.

    FIFOs, sockets and devices are refused without blocking (opened with ``O_NONBLOCK``, checked with
    ``fstat`` on the open descriptor, so a file swapped after a listing is caught too).

    Raises:
        UnreadableImage: not a regular file, or too large.
        OSError: the file cannot be opened or read (permission denied, vanished ...).
    """
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0))
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise UnreadableImage("not a regular file (a FIFO, socket or device): not read")
        if info.st_size > max_bytes:
            raise UnreadableImage(f"file too large ({info.st_size / 2**20:.0f} MiB; the limit is "
                                  f"{max_bytes / 2**20:.0f} MiB): not read")
        chunks, total = [], 0
        while True:
            chunk = os.read(fd, min(1 << 20, max_bytes + 1 - total))
            if not chunk:
                break
            chunks.append(chunk)
            total += len(chunk)
            if total > max_bytes:  # it grew while being read
                raise UnreadableImage(f"file too large (over {max_bytes / 2**20:.0f} MiB): not read")
        return b"".join(chunks)
    finally:
        os.close(fd)


def check_resize_plan(width: int, height: int) -> None:
    """Refuse an image whose centred square would be a sliver (a 1x6000 strip, a 12x4,128,777 TIFF):
    raises UnreadableImage before any pixel is decoded."""
    if width < 1 or height < 1:
        raise UnreadableImage("image has no pixels")
    if max(width, height) > MAX_ASPECT_RATIO * min(width, height):
        raise UnreadableImage(f"too elongated ({width}x{height} pixels; graftkit takes images whose longer "
                              f"side is at most {MAX_ASPECT_RATIO}x the shorter)")


class TooManyPixels(UnreadableImage):
    """An image whose header declares more pixels than the caller accepts."""


def check_image_header(data: bytes, max_pixels: int) -> tuple[int, int]:
    """``(width, height)`` from the header of an image file's bytes, before any pixel is decoded.

    Raises:
        TooManyPixels: more than ``max_pixels`` pixels (or more than Pillow's decompression-bomb limit).
        UnreadableImage: elongated beyond ``MAX_ASPECT_RATIO`` (``check_resize_plan``) or no pixels.
        PIL errors (``PIL_ERRORS``): not an image Pillow recognises.
    """
    import io

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as img:
                width, height = img.size
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise TooManyPixels(f"too many pixels ({str(exc).split(',')[0]})") from None
    if width * height > max_pixels:
        raise TooManyPixels(f"too many pixels ({width}x{height} = {width * height:,}; the limit is {max_pixels:,})")
    check_resize_plan(width, height)
    return width, height


def is_image_name(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_EXTENSIONS


def to_rgb(img: Image.Image) -> Image.Image:
    """Convert any Pillow mode to 8-bit RGB; transparency is flattened onto white."""
    if img.mode == "RGB":
        return img
    if img.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        # Pillow clips 16-bit values at 255 when converting: scale the range instead.
        arr = np.asarray(img, dtype=np.float64)
        top = 65535.0 if img.mode.startswith("I;16") or arr.max() > 255 else 255.0
        arr = np.clip(arr / top * 255.0, 0, 255).astype(np.uint8)
        return Image.fromarray(arr, "L").convert("RGB")
    if img.mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
    if img.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return img.convert("RGB")


def load_image(path, min_size: int | None = None) -> Image.Image:
    """Decode ``path`` fully into an RGB image with EXIF orientation applied.

    Args:
        path: the image file (a path or a binary file object).
        min_size: for JPEGs, let the decoder downscale by a power of two while both sides stay
            at least this large (much faster for big photos, same result after resizing).

    Raises what Pillow raises for a bad file (``PIL_ERRORS``: OSError, ValueError,
    DecompressionBombError ...), and UnreadableImage for anything else a decoder raises (a malformed
    DDS raises NotImplementedError) and for images too elongated to use (``check_resize_plan``).
    """
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as img:
                check_resize_plan(*img.size)  # from the header: nothing decoded yet
                if min_size:
                    img.draft("RGB", (min_size, min_size))  # JPEG: decode at a reduced scale
                img.load()
                img = ImageOps.exif_transpose(img)
                return to_rgb(img)
    except (MemoryError, *PIL_ERRORS):
        raise
    except Exception as exc:  # a decoder's own failure: the file is unreadable, whatever the type
        message = str(exc).strip().splitlines()[0][:80] if str(exc).strip() else ""
        raise UnreadableImage(f"cannot decode ({type(exc).__name__}{': ' + message if message else ''})") from exc


def resize_center_square(img: Image.Image, size: int) -> Image.Image:
    """Shorter side to ``size`` (bilinear, antialiased), then the centred ``size``×``size`` square.

    When the resized image would exceed 4x the square (an elongated image), only the square is
    resampled (``resize(box=...)``, equal to resize-then-crop within one grey level), so memory stays
    within 4x ``size``² whatever the aspect ratio.
    """
    width, height = img.size
    scale = size / min(width, height)
    new_w, new_h = max(size, round(width * scale)), max(size, round(height * scale))
    left, top = (new_w - size) // 2, (new_h - size) // 2
    if new_w * new_h > 4 * size * size:
        sx, sy = width / new_w, height / new_h
        return img.resize((size, size), Image.BILINEAR,
                          box=(left * sx, top * sy, (left + size) * sx, (top + size) * sy))
    if (new_w, new_h) != (width, height):
        img = img.resize((new_w, new_h), Image.BILINEAR)
    return img.crop((left, top, left + size, top + size))
