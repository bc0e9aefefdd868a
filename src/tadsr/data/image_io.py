"""Reading and writing images for super-resolution, keeping what users care about.

* 8- and 16-bit images (16-bit PNG/TIFF stay 16-bit on output; OpenCV is the reader, the only library here that
  reads 16-bit RGB exactly), grayscale, grayscale + alpha, RGB and RGBA;
* the EXIF orientation is applied to the pixels (and reset to 1 in the copied EXIF);
* the ICC profile and EXIF are copied to the output where the format allows (PNG, JPEG, WebP; TIFF gets the ICC);
* a decompression-bomb guard that cannot be bypassed: the file size is bounded before the file is read (by what
  an image of ``max_pixels`` can need), the format must be one Pillow parses the header of (PNG, JPEG, WebP, TIFF,
  BMP: the same file types OpenCV then decodes; anything else, e.g. a Radiance HDR named .png, is refused), and
  width x height from that header is checked before decoding; Pillow's own global limit is left as the program
  set it, and OpenCV's log lines are silenced around our decodes only (our one-line error is the message);
* every failure is an ``ImageError`` whose one-line message starts with the file name;
* outputs are written to a temporary file in the target folder and renamed: never a half-written file.

Pixel arrays are numpy (H, W) or (H, W, C), C in {2, 3, 4} (gray+alpha, RGB, RGBA), in RGB(A) order.
"""

from __future__ import annotations

import contextlib
import io
import os
import struct
import warnings
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from PIL import Image, UnidentifiedImageError

from tadsr.errors import ConfigError, TadsrError, first_line
from tadsr.fileio import atomic_write_bytes

READ_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".tif", ".tiff", ".bmp")
WRITE_FORMATS = ("png", "jpg", "webp", "tif")
DEFAULT_MAX_PIXELS = 50_000_000
MIN_SIDE = 4
# The formats whose header Pillow parses and OpenCV decodes; Pillow's names.
READ_FORMATS = ("PNG", "JPEG", "MPO", "WEBP", "TIFF", "BMP")
BYTES_PER_PIXEL_BOUND = 8  # 16-bit RGBA, uncompressed: no file of an allowed image is larger (plus headers)
HEADER_BYTES_BOUND = 64 << 20  # metadata (ICC, EXIF, XMP) and container overhead
ORIENTATION_TAG = 0x0112
JPEG_QUALITY = 95


class ImageError(TadsrError, ValueError):
    """A file that cannot be read or written as an image; the message names the file and the problem."""


@dataclass
class ImageData:
    """Pixels plus the metadata that should travel to the output."""

    pixels: np.ndarray
    icc_profile: bytes | None = None
    exif: bytes | None = None

    @property
    def bit_depth(self) -> int:
        return 16 if self.pixels.dtype == np.uint16 else 8

    @property
    def has_alpha(self) -> bool:
        return self.pixels.ndim == 3 and self.pixels.shape[2] in (2, 4)

    @property
    def is_gray(self) -> bool:
        return self.pixels.ndim == 2 or self.pixels.shape[2] == 2


def apply_orientation(pixels: np.ndarray, orientation: int) -> np.ndarray:
    """Turn pixels stored with EXIF ``orientation`` (1-8) upright (same result as PIL.ImageOps.exif_transpose)."""
    swap = (1, 0) + tuple(range(2, pixels.ndim))
    ops = {
        2: lambda a: a[:, ::-1],
        3: lambda a: a[::-1, ::-1],
        4: lambda a: a[::-1],
        5: lambda a: a.transpose(swap),
        6: lambda a: np.rot90(a, k=-1),
        7: lambda a: np.rot90(a, k=2).transpose(swap),
        8: lambda a: np.rot90(a, k=1),
    }
    return np.ascontiguousarray(ops[orientation](pixels)) if orientation in ops else pixels


@contextlib.contextmanager
def _quiet_decoders() -> Iterator[None]:
    """Around our own reads only: no Pillow pixel limit (ours was checked from the header), no Pillow warnings,
    no OpenCV log lines; the settings the program had are restored afterwards."""
    limit, level = Image.MAX_IMAGE_PIXELS, cv2.utils.logging.getLogLevel()
    Image.MAX_IMAGE_PIXELS = None
    cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_SILENT)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        Image.MAX_IMAGE_PIXELS = limit
        cv2.utils.logging.setLogLevel(level)


def _header(data: bytes) -> Image.Image | None:
    """Pillow's lazy view of the file (size, mode, metadata, no pixels decoded); None where Pillow can't parse it."""
    try:
        with _quiet_decoders():
            return Image.open(io.BytesIO(data))
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError):
        return None


def max_file_bytes(max_pixels: int) -> int:
    """The largest file ``read_image`` reads for a pixel limit (0: no limit)."""
    return max_pixels * BYTES_PER_PIXEL_BOUND + HEADER_BYTES_BOUND if max_pixels else 0


def _integrity_problem(data: bytes, fmt: str | None) -> str | None:
    """Why the file is corrupt or cut short, or None; cheaper than a full decode where the format allows.

    PNG: every chunk and its CRC up to IEND (no inflating). JPEG: a 1/8-scale decode, which still reads every
    scan. Others: a full decode by Pillow. (OpenCV, the real decoder, returns a partly grey image for a truncated
    JPEG instead of failing, hence this check.)
    """
    try:
        with _quiet_decoders(), Image.open(io.BytesIO(data)) as im:
            if fmt == "PNG":
                im.verify()
            else:
                if fmt == "JPEG":
                    im.draft(im.mode, (max(1, im.size[0] // 8), max(1, im.size[1] // 8)))
                im.load()
    except (OSError, SyntaxError, ValueError, struct.error) as err:
        return str(err) or type(err).__name__
    return None


def read_image(path: str | os.PathLike, max_pixels: int = DEFAULT_MAX_PIXELS) -> ImageData:
    """Read an image file upright, with its ICC profile and EXIF; ImageError on anything unusable.

    ``max_pixels`` (0 disables) bounds width x height, checked from the header before decoding, and the file size
    (``max_file_bytes``), checked before reading.
    """
    path = Path(path)
    try:
        data = _read_bytes(path, max_pixels)
        gray, orientation, icc, exif_bytes = _checked_header(path, data, max_pixels)
        pixels = _decode(path, data, max_pixels)
    except MemoryError:  # --max-pixels 0 and a file larger than this process may allocate
        raise ImageError(f"{path}: not enough memory to read it (keep --max-pixels on, or free memory)") from None
    return ImageData(apply_orientation(_to_rgb_order(pixels, gray), orientation), icc_profile=icc, exif=exif_bytes)


def _read_bytes(path: Path, max_pixels: int) -> bytes:
    """The file's bytes, its size bounded first (``read_image``)."""
    try:
        size = path.stat().st_size
        if max_pixels and size > max_file_bytes(max_pixels):
            raise ImageError(f"{path}: {size:,} bytes is more than any image within the limit of {max_pixels:,} "
                             "pixels needs (raise it with --max-pixels)")
        data = path.read_bytes()
    except FileNotFoundError:
        raise ImageError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise ImageError(f"{path}: a folder, not an image file") from None
    except OSError as err:
        raise ImageError(f"{path}: cannot read ({err.strerror or err})") from None
    if not data:
        raise ImageError(f"{path}: empty file")
    return data


def _checked_header(path: Path, data: bytes, max_pixels: int) -> tuple[bool, int, bytes | None, bytes | None]:
    """From the header, before any pixel is decoded: the format and size checks, the stream's integrity; returns
    (grayscale, EXIF orientation, ICC profile, EXIF bytes with the orientation reset to upright)."""
    header = _header(data)
    if header is None:
        raise ImageError(f"{path}: not a readable image (corrupt, or not a format tadsr reads: PNG, JPEG, WebP, "
                         "TIFF, BMP); nothing was decoded")
    if header.format not in READ_FORMATS:
        raise ImageError(f"{path}: a {header.format} image; tadsr reads PNG, JPEG, WebP, TIFF and BMP")
    exif_bytes = None
    with header:
        width, height = header.size
        if max_pixels and width * height > max_pixels:
            raise ImageError(f"{path}: {width}x{height} = {width * height:,} pixels exceeds the limit of "
                             f"{max_pixels:,} (raise it with --max-pixels)")
        pil_mode = header.mode
        problem = _integrity_problem(data, header.format)
        if problem:
            raise ImageError(f"{path}: corrupt or truncated image ({problem})")
        icc = header.info.get("icc_profile")
        exif = Image.Exif()
        if header.info.get("exif"):
            exif.load(header.info["exif"])
        orientation = int(exif.get(ORIENTATION_TAG, 1) or 1)
        if len(exif):
            if orientation != 1:
                exif[ORIENTATION_TAG] = 1
            exif_bytes = exif.tobytes()
    return pil_mode.split(";")[0] in ("L", "LA", "I", "1"), orientation, icc, exif_bytes


def _decode(path: Path, data: bytes, max_pixels: int) -> np.ndarray:
    """OpenCV's decoding of checked bytes: (H, W[, C]) uint8 or uint16 in OpenCV's channel order."""
    if data.startswith(PNG_SIGNATURE):
        data = _png_pixels_only(data)
    try:
        with _quiet_decoders():
            pixels = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    except cv2.error as err:  # e.g. beyond OpenCV's own pixel limit when ours is off
        raise ImageError(f"{path}: OpenCV cannot decode it ({first_line(err)})") from None
    if pixels is None:
        raise ImageError(f"{path}: not a readable image (corrupt, truncated or unsupported format)")
    if pixels.size == 0 or min(pixels.shape[:2]) == 0:
        raise ImageError(f"{path}: zero-size image")
    if max_pixels and pixels.shape[0] * pixels.shape[1] > max_pixels:
        raise ImageError(f"{path}: {pixels.shape[1]}x{pixels.shape[0]} pixels exceeds the limit of {max_pixels:,}")
    if pixels.dtype not in (np.uint8, np.uint16):
        raise ImageError(f"{path}: unsupported sample type {pixels.dtype} (8- and 16-bit images only)")
    if min(pixels.shape[:2]) < MIN_SIDE:
        raise ImageError(f"{path}: image too small ({pixels.shape[1]}x{pixels.shape[0]}); "
                         f"each side needs at least {MIN_SIDE} pixels")
    return pixels


def _to_rgb_order(pixels: np.ndarray, gray: bool) -> np.ndarray:
    """OpenCV's BGR(A) to RGB(A); a grayscale file decoded as BGR(A) back to gray (+alpha)."""
    if pixels.ndim == 2:
        return pixels
    channels = pixels.shape[2]
    if channels == 1:
        return pixels[:, :, 0]
    if gray and channels in (3, 4):
        return pixels[:, :, 0] if channels == 3 else np.ascontiguousarray(pixels[:, :, [0, 3]])
    if channels == 3:
        return cv2.cvtColor(pixels, cv2.COLOR_BGR2RGB)
    if channels == 4:
        return cv2.cvtColor(pixels, cv2.COLOR_BGRA2RGBA)
    return pixels


def to_uint8(img: np.ndarray) -> np.ndarray:
    """Float pixels in [0, 1] -> uint8, clipped and rounded to nearest."""
    return np.rint(np.clip(img, 0, 1) * 255).astype(np.uint8)


def output_format(ext: str) -> str:
    """Normalise an extension ('.JPEG', 'tiff', ...) to one of WRITE_FORMATS, or raise ValueError."""
    ext = ext.lower().lstrip(".")
    ext = {"jpeg": "jpg", "tiff": "tif"}.get(ext, ext)
    if ext not in WRITE_FORMATS:
        raise ConfigError(f"unsupported output format {ext!r}; choose from {', '.join(WRITE_FORMATS)}")
    return ext


PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
PNG_PIXEL_CHUNKS = (b"IHDR", b"PLTE", b"tRNS", b"IDAT", b"IEND")  # what the pixels depend on (OpenCV ignores gAMA)


def _png_pixels_only(png: bytes) -> bytes:
    """A checked PNG (``_integrity_problem``) with only the chunks its pixels need, for OpenCV's decoder: the
    metadata was read by Pillow already, and libpng would print its own complaints about a damaged profile or
    text chunk (``libpng warning: iCCP: too short``) straight to stderr."""
    out, pos = [png[:8]], 8
    while pos + 8 <= len(png):
        length, kind = struct.unpack(">I", png[pos:pos + 4])[0], png[pos + 4:pos + 8]
        end = pos + 12 + length
        if kind in PNG_PIXEL_CHUNKS:
            out.append(png[pos:end])
        if kind == b"IEND":
            break
        pos = end
    return b"".join(out)


def _png_chunk(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))


def _png_with_metadata(png: bytes, icc: bytes | None, exif: bytes | None) -> bytes:
    """Insert iCCP and eXIf chunks right after IHDR (PNG spec: both before IDAT)."""
    extra = b""
    if icc:
        extra += _png_chunk(b"iCCP", b"ICC Profile\x00\x00" + zlib.compress(icc))
    if exif:
        extra += _png_chunk(b"eXIf", exif[6:] if exif.startswith(b"Exif\x00\x00") else exif)
    end_of_ihdr = 8 + 4 + 4 + 13 + 4
    return png[:end_of_ihdr] + extra + png[end_of_ihdr:]


def gray_to_rgb(pixels: np.ndarray) -> np.ndarray:
    """Gray (H, W), (H, W, 1) or gray + alpha (H, W, 2) as RGB (H, W, 3) or RGBA (H, W, 4); colour unchanged."""
    if pixels.ndim == 2:
        pixels = pixels[:, :, None]
    if pixels.shape[2] in (1, 2):
        pixels = np.concatenate([np.repeat(pixels[:, :, :1], 3, axis=2), pixels[:, :, 1:]], axis=2)
    return pixels


def to_8bit(pixels: np.ndarray) -> np.ndarray:
    """uint16 pixels rounded to uint8 (x / 257); uint8 pixels unchanged."""
    if pixels.dtype == np.uint16:
        return ((pixels.astype(np.uint32) + 128) // 257).astype(np.uint8)
    return pixels


def encode_image(image: ImageData, fmt: str) -> bytes:
    """Encode to ``fmt`` (png, jpg, webp, tif); 16-bit kept for png/tif, reduced to 8-bit otherwise."""
    fmt = output_format(fmt)
    pixels = image.pixels
    if fmt == "jpg" and image.has_alpha:  # JPEG has no alpha channel
        pixels = pixels[:, :, 0] if pixels.shape[2] == 2 else pixels[:, :, :3]
    if pixels.dtype == np.uint16 and fmt in ("png", "tif"):
        if pixels.ndim == 3 and pixels.shape[2] == 2:  # OpenCV writes no 16-bit gray+alpha: store as RGBA
            pixels = gray_to_rgb(pixels)
        bgr = pixels if pixels.ndim == 2 else cv2.cvtColor(
            pixels, cv2.COLOR_RGB2BGR if pixels.shape[2] == 3 else cv2.COLOR_RGBA2BGRA)
        ok, buf = cv2.imencode(f".{fmt}", bgr)
        if not ok:
            raise ValueError(f"OpenCV could not encode a 16-bit {fmt}")
        data = buf.tobytes()
        return _png_with_metadata(data, image.icc_profile, image.exif) if fmt == "png" else data
    pil = Image.fromarray(to_8bit(pixels))  # L, LA, RGB or RGBA from the shape
    kwargs: dict = {}
    if image.icc_profile:
        kwargs["icc_profile"] = image.icc_profile
    if image.exif and fmt in ("png", "jpg", "webp"):
        kwargs["exif"] = image.exif
    if fmt == "jpg":
        kwargs.update(quality=JPEG_QUALITY, subsampling=0)
    elif fmt == "webp":
        kwargs.update(quality=JPEG_QUALITY)
    out = io.BytesIO()
    pil.save(out, format={"png": "PNG", "jpg": "JPEG", "webp": "WEBP", "tif": "TIFF"}[fmt], **kwargs)
    return out.getvalue()


def write_image(path: str | os.PathLike, image: ImageData, fmt: str | None = None) -> None:
    """Encode ``image`` (format from ``fmt`` or the path's extension) and write it atomically; ImageError on failure."""
    path = Path(path)
    try:
        data = encode_image(image, fmt or path.suffix)
        atomic_write_bytes(path, data)
    except (OSError, ValueError) as err:
        reason = err.strerror if isinstance(err, OSError) and err.strerror else str(err)
        raise ImageError(f"{path}: cannot write ({reason})") from None


def pixel_count(path: str | os.PathLike) -> int:
    """Width x height from the image header, without decoding the pixels (to balance work across processes); 1 for
    a file that cannot be read (it fails later, with its one line, where it is processed)."""
    try:
        with _quiet_decoders(), Image.open(path) as img:
            return img.width * img.height
    except (OSError, ValueError, UnidentifiedImageError, Image.DecompressionBombError):
        return 1
