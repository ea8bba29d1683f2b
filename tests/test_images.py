"""load_image: every source kind, colour modes, EXIF orientation, frames and every refusal."""

from __future__ import annotations

import io
import os
import struct
import sys
import time
import warnings
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageFile, ImageOps

try:
    import dinoscope.images  # noqa: F401
except ModuleNotFoundError:  # running from a checkout without an install
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from dinoscope import images
from dinoscope.errors import InputError
from dinoscope.images import (
    DEFAULT_MAX_PIXELS,
    SAMPLES,
    image_digest,
    load_image,
    sample_path,
)


# ---------------------------------------------------------------------------
# helpers


def encode(image: Image.Image, fmt: str, **params) -> bytes:
    buf = io.BytesIO()
    image.save(buf, fmt, **params)
    return buf.getvalue()


def write(tmp_path: Path, name: str, data: bytes) -> Path:
    path = tmp_path / name
    path.write_bytes(data)
    return path


def png_chunk(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload) & 0xFFFFFFFF)


def crafted_png(width: int, height: int) -> bytes:
    """A PNG whose header declares width x height RGB pixels but holds one row of data."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\x00" + b"\x00" * 30)
    return b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", ihdr) + png_chunk(b"IDAT", idat) + png_chunk(b"IEND", b"")


def refused(source, match: str | None = None, **kwargs) -> str:
    with pytest.raises(InputError) as info:
        load_image(source, **kwargs)
    message = str(info.value)
    assert "\n" not in message and "\r" not in message, message
    assert message.strip(), "empty message"
    if match is not None:
        assert match.lower() in message.lower(), message
    return message


def assert_rgb(image: Image.Image, size: tuple[int, int] | None = None) -> None:
    assert isinstance(image, Image.Image)
    assert image.mode == "RGB"
    if size is not None:
        assert image.size == size
    image.tobytes()  # fully loaded and readable


def close(a, b, tol=12) -> bool:
    return all(abs(int(x) - int(y)) <= tol for x, y in zip(a, b))


@pytest.fixture(scope="module")
def photo() -> Image.Image:
    with Image.open(SAMPLES["chelsea"]) as im:
        return im.convert("RGB").resize((48, 32))


# ---------------------------------------------------------------------------
# samples


def test_samples_exist_and_load():
    assert set(SAMPLES) == {"chelsea", "coffee", "astronaut"}
    for name, path in SAMPLES.items():
        assert path.is_file()
        assert sample_path(name) == path
        assert sample_path(name.upper()) == path
        image = load_image(f"sample:{name}")
        assert_rgb(image)
        assert image.width > 100 and image.height > 100


def test_sample_bad_name_lists_valid_names():
    with pytest.raises(InputError) as info:
        sample_path("dog")
    message = str(info.value)
    assert "\n" not in message
    for name in SAMPLES:
        assert name in message
    refused("sample:dog", "astronaut")


def test_bare_sample_name_hints_at_prefix(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    refused("chelsea", "sample:chelsea")


# ---------------------------------------------------------------------------
# source kinds


def test_path_str_and_pathlike(tmp_path, photo):
    path = write(tmp_path, "p.png", encode(photo, "PNG"))
    a = load_image(str(path))
    b = load_image(path)
    assert_rgb(a, (48, 32))
    assert a.tobytes() == b.tobytes() == photo.tobytes()


def test_result_is_detached_from_file(tmp_path, photo):
    path = write(tmp_path, "p.png", encode(photo, "PNG"))
    image = load_image(path)
    path.unlink()
    assert image.tobytes() == photo.tobytes()
    assert type(image) is Image.Image


def test_bytes_bytearray_memoryview(photo):
    data = encode(photo, "PNG")
    for source in (data, bytearray(data), memoryview(data)):
        image = load_image(source)
        assert_rgb(image, (48, 32))
        assert image.tobytes() == photo.tobytes()


def test_pil_image_sources(photo):
    same = load_image(photo)
    assert same is not photo
    assert same.tobytes() == photo.tobytes()
    lazy = Image.open(io.BytesIO(encode(photo, "PNG")))  # not yet loaded
    assert_rgb(load_image(lazy), (48, 32))
    assert_rgb(load_image(photo.convert("L")), (48, 32))


def test_pil_image_truncated_is_refused(photo):
    data = encode(photo, "PNG")
    lazy = Image.open(io.BytesIO(data[: len(data) // 2]))
    refused(lazy, "truncated")


@pytest.mark.parametrize(
    "array, expected",
    [
        (np.full((4, 6), 200, np.uint8), (200, 200, 200)),
        (np.full((4, 6, 1), 100, np.uint8), (100, 100, 100)),
        (np.tile(np.array([10, 20, 30], np.uint8), (4, 6, 1)), (10, 20, 30)),
        (np.tile(np.array([255, 0, 0, 0], np.uint8), (4, 6, 1)), (255, 255, 255)),
        (np.tile(np.array([255, 0, 0, 255], np.uint8), (4, 6, 1)), (255, 0, 0)),
        (np.full((4, 6), 65535, np.uint16), (255, 255, 255)),
        (np.full((4, 6, 3), 257 * 128, np.uint16), (128, 128, 128)),
        (np.ones((4, 6), bool), (255, 255, 255)),
        (np.zeros((4, 6), bool), (0, 0, 0)),
        (np.full((4, 6, 3), 0.5, np.float32), (128, 128, 128)),
        (np.full((4, 6), 1.0, np.float64), (255, 255, 255)),
        (np.full((4, 6, 4), 1.0, np.float16), (255, 255, 255)),
        (np.full((4, 6, 3), 7, np.int64), (7, 7, 7)),
    ],
    ids=lambda v: f"{v.dtype}{v.shape}" if isinstance(v, np.ndarray) else None,
)
def test_numpy_arrays(array, expected):
    image = load_image(array)
    assert_rgb(image, (6, 4))
    assert image.getpixel((2, 1)) == expected


def test_numpy_float_ramp_and_no_shared_memory():
    ramp = np.linspace(0.0, 1.0, 11, dtype=np.float32).reshape(1, 11)
    image = load_image(ramp)
    values = [image.getpixel((x, 0))[0] for x in range(11)]
    assert close(values, [v * 255 for v in np.linspace(0, 1, 11)], 1)
    assert values[0] == 0 and values[-1] == 255
    arr = np.zeros((3, 3, 3), np.uint8)
    image = load_image(arr)
    arr[:] = 255
    assert image.getpixel((1, 1)) == (0, 0, 0)


def test_numpy_non_contiguous_view():
    arr = np.arange(5 * 8 * 3, dtype=np.uint8).reshape(5, 8, 3)[:, ::2, ::-1]
    image = load_image(arr)
    assert_rgb(image, (4, 5))
    assert np.array_equal(np.asarray(image), arr)


@pytest.mark.parametrize(
    "array, match",
    [
        (np.zeros((3, 32, 32), np.float32), "transpose"),
        (np.zeros((2, 2, 2), np.uint8), "HxW"),
        (np.zeros((5,), np.uint8), "HxW"),
        (np.zeros((2, 2, 2, 3), np.uint8), "HxW"),
        (np.zeros((0, 5), np.uint8), "1x1"),
        (np.zeros((5, 0, 3), np.uint8), "1x1"),
        (np.full((4, 4), 2.0, np.float32), "[0, 1]"),
        (np.full((4, 4), -0.1, np.float32), "[0, 1]"),
        (np.full((4, 4), np.nan, np.float32), "NaN"),
        (np.full((4, 4), 300, np.int32), "uint8"),
        (np.zeros((4, 4), np.complex64), "dtype"),
        (np.array([["a", "b"]]), "dtype"),
    ],
    ids=lambda v: f"{v.dtype}{v.shape}" if isinstance(v, np.ndarray) else v,
)
def test_numpy_refusals(array, match):
    refused(array, match)


def test_array_like_object():
    class Wrapped:
        def __array__(self, dtype=None, copy=None):
            return np.full((2, 3, 3), 9, np.uint8)

    assert load_image(Wrapped()).getpixel((0, 0)) == (9, 9, 9)


@pytest.mark.parametrize("source", [12, 3.5, None, object(), [[1, 2]], {"a": 1}])
def test_unsupported_source_types(source):
    refused(source, "pass a file path")


@pytest.mark.parametrize("url", ["ftp://example.com/a.jpg", "file:///tmp/a.png", "s3://bucket/a.png"])
def test_unsupported_url_schemes(url):
    refused(url, "not supported")


# ---------------------------------------------------------------------------
# colour modes


def test_palette_with_transparency_composited_on_white(tmp_path):
    image = Image.new("P", (8, 8), 0)
    image.putpalette([255, 0, 0, 0, 0, 255] + [0] * 762)
    image.paste(1, (4, 0, 8, 8))
    for fmt, name in (("PNG", "p.png"), ("GIF", "p.gif")):
        path = write(tmp_path, name, encode(image, fmt, transparency=0))
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            out = load_image(path)
        assert_rgb(out, (8, 8))
        assert out.getpixel((1, 1)) == (255, 255, 255)
        assert out.getpixel((6, 1)) == (0, 0, 255)


def test_palette_without_transparency(tmp_path):
    image = Image.new("P", (4, 4), 1)
    image.putpalette([0, 0, 0, 10, 200, 30] + [0] * 762)
    out = load_image(write(tmp_path, "p.png", encode(image, "PNG")))
    assert out.getpixel((0, 0)) == (10, 200, 30)


def test_palette_with_rgba_palette():
    image = Image.new("P", (4, 4), 0)
    image.putpalette([255, 0, 0, 0, 0, 255, 0, 255], rawmode="RGBA")
    image.putpixel((1, 1), 1)
    out = load_image(image)
    assert out.getpixel((0, 0)) == (255, 255, 255)
    assert out.getpixel((1, 1)) == (0, 255, 0)


def test_grey_l_and_la(tmp_path):
    grey = Image.new("L", (5, 3), 77)
    assert load_image(write(tmp_path, "l.png", encode(grey, "PNG"))).getpixel((0, 0)) == (77, 77, 77)
    la = Image.new("LA", (5, 3), (0, 0))
    la.putpixel((1, 1), (20, 255))
    out = load_image(write(tmp_path, "la.png", encode(la, "PNG")))
    assert out.getpixel((0, 0)) == (255, 255, 255)
    assert out.getpixel((1, 1)) == (20, 20, 20)


def test_grey_with_trns_chunk(tmp_path):
    grey = Image.new("L", (4, 4), 9)
    grey.putpixel((0, 0), 50)
    out = load_image(write(tmp_path, "t.png", encode(grey, "PNG", transparency=9)))
    assert out.getpixel((1, 1)) == (255, 255, 255)
    assert out.getpixel((0, 0)) == (50, 50, 50)


def test_rgba_half_transparent(tmp_path):
    rgba = Image.new("RGBA", (4, 4), (0, 0, 0, 128))
    out = load_image(write(tmp_path, "a.png", encode(rgba, "PNG")))
    assert close(out.getpixel((0, 0)), (127, 127, 127), 1)
    webp = load_image(encode(Image.new("RGBA", (4, 4), (255, 0, 0, 0)), "WEBP", lossless=True))
    assert webp.getpixel((0, 0)) == (255, 255, 255)


def test_sixteen_bit_png_scaled_not_clipped(tmp_path):
    values = np.array([[0, 257, 32768, 65535]], dtype=np.uint16)
    source = Image.fromarray(values)
    assert source.mode == "I;16"
    path = write(tmp_path, "g16.png", encode(source, "PNG"))
    with Image.open(path) as raw:
        assert raw.mode.startswith("I")
    out = load_image(path)
    assert [out.getpixel((x, 0))[0] for x in range(4)] == [0, 1, 128, 255]


def test_int32_and_float_modes():
    i32 = Image.fromarray(np.array([[0, 1000, 65535]], dtype=np.int32))
    assert i32.mode == "I"
    assert [load_image(i32).getpixel((x, 0))[0] for x in range(3)] == [0, 4, 255]
    f32 = Image.fromarray(np.array([[0.0, 0.5, 1.0]], dtype=np.float32))
    assert f32.mode == "F"
    assert [load_image(f32).getpixel((x, 0))[0] for x in range(3)] == [0, 128, 255]
    wide = Image.fromarray(np.array([[-5.0, 0.0, 5.0, np.nan]], dtype=np.float32))
    assert [load_image(wide).getpixel((x, 0))[0] for x in range(3)] == [0, 128, 255]


def test_float_tiff(tmp_path):
    f32 = Image.fromarray(np.linspace(0, 1, 12, dtype=np.float32).reshape(3, 4))
    out = load_image(write(tmp_path, "f.tif", encode(f32, "TIFF")))
    assert_rgb(out, (4, 3))
    assert out.getpixel((3, 2)) == (255, 255, 255)


def test_cmyk_jpeg(tmp_path):
    cmyk = Image.new("CMYK", (16, 16), (0, 0, 0, 0))
    cmyk.paste((255, 0, 0, 0), (8, 0, 16, 16))
    path = write(tmp_path, "c.jpg", encode(cmyk, "JPEG", quality=95))
    with Image.open(path) as raw:
        assert raw.mode == "CMYK"
    out = load_image(path)
    assert_rgb(out, (16, 16))
    assert close(out.getpixel((2, 8)), (255, 255, 255))
    assert close(out.getpixel((13, 8)), (0, 255, 255))


def test_one_bit(tmp_path):
    bits = Image.new("1", (9, 9), 0)
    bits.putpixel((4, 4), 1)
    for fmt, name in (("PNG", "b.png"), ("BMP", "b.bmp"), ("TIFF", "b.tif")):
        out = load_image(write(tmp_path, name, encode(bits, fmt)))
        assert out.getpixel((0, 0)) == (0, 0, 0)
        assert out.getpixel((4, 4)) == (255, 255, 255)


@pytest.mark.parametrize("mode", ["YCbCr", "HSV", "RGBX", "RGBa", "La", "PA"])
def test_other_pil_modes(mode):
    image = Image.new("RGB", (3, 3), (200, 100, 50))
    try:
        converted = image.convert(mode)
    except ValueError:
        pytest.skip(f"Pillow cannot make {mode}")
    out = load_image(converted)
    assert_rgb(out, (3, 3))


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP", "GIF", "TIFF", "BMP", "PPM", "TGA", "ICO", "QOI"])
def test_formats_round_trip(photo, fmt):
    try:
        data = encode(photo, fmt)
    except (KeyError, OSError, ValueError):
        pytest.skip(f"Pillow cannot write {fmt}")
    out = load_image(data)
    assert_rgb(out, (32, 21) if fmt == "ICO" else (48, 32))  # ICO stores a 32 px thumbnail


# ---------------------------------------------------------------------------
# EXIF orientation

# Where the red top-left quadrant of a 64x32 stored image ends up, and the output size.
ORIENTATIONS = {
    1: ("top-left", (64, 32)),
    2: ("top-right", (64, 32)),
    3: ("bottom-right", (64, 32)),
    4: ("bottom-left", (64, 32)),
    5: ("top-left", (32, 64)),
    6: ("top-right", (32, 64)),
    7: ("bottom-right", (32, 64)),
    8: ("bottom-left", (32, 64)),
}


@pytest.mark.parametrize("orientation", sorted(ORIENTATIONS))
def test_exif_orientation(tmp_path, orientation):
    stored = Image.new("RGB", (64, 32), (0, 0, 255))
    stored.paste((255, 0, 0), (0, 0, 32, 16))
    exif = Image.Exif()
    exif[0x0112] = orientation
    path = write(tmp_path, f"o{orientation}.jpg", encode(stored, "JPEG", quality=95, exif=exif.tobytes()))
    out = load_image(path)
    corner, size = ORIENTATIONS[orientation]
    assert_rgb(out, size)
    w, h = size
    centres = {
        "top-left": (w // 4, h // 4),
        "top-right": (3 * w // 4, h // 4),
        "bottom-left": (w // 4, 3 * h // 4),
        "bottom-right": (3 * w // 4, 3 * h // 4),
    }
    for name, xy in centres.items():
        expected = (255, 0, 0) if name == corner else (0, 0, 255)
        assert close(out.getpixel(xy), expected, 40), (orientation, name, out.getpixel(xy))
    # Same pixels as Pillow's own ImageOps.exif_transpose, and the tag is used up.
    with Image.open(path) as raw:
        assert out.tobytes() == ImageOps.exif_transpose(raw).convert("RGB").tobytes()
    assert out.getexif().get(0x0112) is None
    again = load_image(encode(out, "PNG"))
    assert again.size == out.size


def test_exif_orientation_on_png_and_pil_input():
    stored = Image.new("RGB", (6, 2), (0, 0, 0))
    exif = Image.Exif()
    exif[0x0112] = 6
    data = encode(stored, "PNG", exif=exif.tobytes())
    assert load_image(data).size == (2, 6)
    assert load_image(Image.open(io.BytesIO(data))).size == (2, 6)


@pytest.mark.filterwarnings("ignore:Corrupt EXIF data")
def test_broken_exif_still_loads(photo):
    data = encode(photo, "JPEG", exif=b"Exif\x00\x00MM\x00*\x00\x00\x00\x08\xff\xff\x01\x12")
    assert_rgb(load_image(data), (48, 32))


# ---------------------------------------------------------------------------
# frames and sizes


def test_animated_gif_gives_first_frame(tmp_path):
    colours = [(255, 0, 0), (0, 255, 0), (0, 0, 255)]
    frames = [Image.new("RGB", (10, 10), c) for c in colours]
    path = tmp_path / "anim.gif"
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=50, loop=0)
    with Image.open(path) as raw:
        assert raw.n_frames == 3
    assert load_image(path).getpixel((5, 5)) == (255, 0, 0)


@pytest.mark.parametrize("fmt, ext", [("WEBP", "webp"), ("PNG", "png"), ("TIFF", "tif")])
def test_animated_and_multipage_first_frame(tmp_path, fmt, ext):
    frames = [Image.new("RGB", (10, 10), c) for c in [(0, 200, 0), (200, 0, 0), (0, 0, 200)]]
    path = tmp_path / f"multi.{ext}"
    params = {"lossless": True} if fmt == "WEBP" else {}
    frames[0].save(path, fmt, save_all=True, append_images=frames[1:], **params)
    with Image.open(path) as raw:
        assert getattr(raw, "n_frames", 1) == 3
    assert close(load_image(path).getpixel((5, 5)), (0, 200, 0), 3)


def test_gif_with_500_frames_is_quick(tmp_path):
    frames = [Image.new("P", (16, 16), i % 256) for i in range(500)]
    palette = [v for i in range(256) for v in (i, 255 - i, (i * 7) % 256)]
    for frame in frames:
        frame.putpalette(palette)
    path = tmp_path / "many.gif"
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=10)
    start = time.perf_counter()
    out = load_image(path)
    assert time.perf_counter() - start < 2.0  # about 5 ms: later frames are never read
    assert out.getpixel((0, 0)) == (0, 255, 0)


@pytest.mark.parametrize("size", [(1, 1), (15, 15), (1, 10000), (10000, 1)])
def test_tiny_and_thin_images(tmp_path, size):
    image = Image.new("RGB", size, (1, 2, 3))
    for fmt in ("PNG", "JPEG"):
        out = load_image(encode(image, fmt))
        assert_rgb(out, size)


def test_huge_declared_png_refused_fast(tmp_path):
    path = write(tmp_path, "bomb.png", crafted_png(40000, 40000))
    assert path.stat().st_size < 200
    start = time.perf_counter()
    message = refused(path, "max_pixels=")
    assert time.perf_counter() - start < 1.0  # decoding 1.6 G pixels would take minutes and 6 GB
    assert "bomb.png" in message
    assert "1,600,000,000" in message or "40000x40000" in message


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")
def test_declared_size_over_our_limit_below_pillows(tmp_path):
    # 11000 x 10000 = 110 M pixels: Pillow only warns, our default limit of 100 M refuses.
    assert 11000 * 10000 > DEFAULT_MAX_PIXELS
    start = time.perf_counter()
    message = refused(crafted_png(11000, 10000), "11000x10000")
    assert "max_pixels=" in message and "100,000,000" in message
    assert time.perf_counter() - start < 1.0


def test_pillow_bomb_warning_as_error_is_input_error():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        refused(crafted_png(11000, 10000), "max_pixels=", max_pixels=None)


def test_max_pixels_limit_is_exact(photo):
    data = encode(photo, "PNG")
    assert_rgb(load_image(data, max_pixels=48 * 32))
    message = refused(data, "48x32", max_pixels=48 * 32 - 1)
    assert "1,535" in message
    refused(photo, "max_pixels=", max_pixels=100)
    refused(np.zeros((10, 10), np.uint8), "max_pixels=", max_pixels=99)


@pytest.mark.parametrize("value", [0, -1, 1.5, "10", True])
def test_bad_max_pixels(value, photo):
    refused(photo, "max_pixels", max_pixels=value)


def test_zero_size_declared_png():
    refused(crafted_png(0, 5))


def test_pillow_bomb_error_is_input_error(tmp_path):
    # Above Pillow's own hard limit even with our limit lifted.
    message = refused(crafted_png(40000, 40000), "MAX_IMAGE_PIXELS", max_pixels=None)
    assert "1,600,000,000" in message


def test_truncated_images_not_loaded_leniently(tmp_path, photo):
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False
    for fmt in ("JPEG", "PNG", "GIF", "WEBP", "TIFF"):
        data = encode(photo, fmt)
        path = write(tmp_path, f"cut.{fmt.lower()}", data[: len(data) * 2 // 3])
        message = refused(path)
        assert "cut." in message
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False


def test_corrupt_image_body(photo):
    data = bytearray(encode(photo, "PNG"))
    data[60:90] = b"\x00" * 30
    refused(bytes(data), "damaged")


# ---------------------------------------------------------------------------
# refusals of paths and content


def test_missing_path(tmp_path):
    message = refused(tmp_path / "nope.jpg", "no such file")
    assert "nope.jpg" in message


def test_directory(tmp_path):
    refused(tmp_path, "folder")


def test_zero_byte_file(tmp_path):
    refused(write(tmp_path, "empty.jpg", b""), "empty")
    refused(b"", "empty")


@pytest.mark.skipif(not hasattr(os, "symlink"), reason="no symlinks")
def test_symlink_loop_and_broken_link(tmp_path):
    a, b = tmp_path / "a.jpg", tmp_path / "b.jpg"
    os.symlink(b, a)
    os.symlink(a, b)
    refused(a, "loop")
    broken = tmp_path / "broken.jpg"
    os.symlink(tmp_path / "missing.jpg", broken)
    refused(broken, "broken symbolic link")


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() == 0, reason="root can read anything")
def test_unreadable_file(tmp_path, photo):
    path = write(tmp_path, "secret.png", encode(photo, "PNG"))
    path.chmod(0)
    try:
        refused(path, "permission denied")
    finally:
        path.chmod(0o644)


def test_unreadable_file_simulated(tmp_path, photo, monkeypatch):
    path = write(tmp_path, "secret.png", encode(photo, "PNG"))

    def deny(*args, **kwargs):
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr(images, "open", deny, raising=False)
    message = refused(path, "permission denied")
    assert "secret.png" in message


def test_read_error_during_decode(tmp_path, photo, monkeypatch):
    path = write(tmp_path, "eio.png", encode(photo, "PNG"))
    real_open = open

    class Failing(io.FileIO):
        def readinto(self, buffer):
            raise OSError(5, "Input/output error")

    def failing_open(p, mode="r", *args, **kwargs):
        return io.BufferedReader(Failing(p, "rb")) if Path(p) == path else real_open(p, mode, *args, **kwargs)

    monkeypatch.setattr(images, "open", failing_open, raising=False)
    refused(path, "eio.png")


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no FIFOs")
def test_fifo_is_not_read(tmp_path):
    fifo = tmp_path / "pipe.jpg"
    os.mkfifo(fifo)
    refused(fifo, "regular file")


@pytest.mark.parametrize(
    "content, match",
    [
        (b"<!DOCTYPE html><html><head><title>x</title></head><body>cat</body></html>", "web page"),
        (b"\xef\xbb\xbf<html>\n<body>hi</body></html>", "web page"),
        (b"just some text\nwith lines\n", "text file"),
        (b'<?xml version="1.0"?><svg xmlns="http://www.w3.org/2000/svg"></svg>', "SVG"),
        (b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n", "PDF"),
        (bytes(range(256)) * 4, "not an image"),
        (b"\x89PNG\r\n\x1a\n", None),
        (b"\x89PNG\r\n\x1a\n" + b"\x00" * 40, "starts like a PNG"),
        (b"caf\xc3\xa9 au lait, " * 60, "text file"),
        (b"\xff\xd8\xff", None),
        (b"GIF89a", None),
        (b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\n", None),
    ],
)
def test_non_image_content(tmp_path, content, match):
    path = write(tmp_path, "thing.jpg", content)
    message = refused(path, match)
    assert "thing.jpg" in message
    refused(content, match)


def test_messages_are_one_line_even_for_odd_paths(tmp_path):
    odd = tmp_path / "two\nlines.jpg"
    refused(odd, "no such file")
    odd.write_bytes(b"<html>")
    refused(odd, "web page")


def test_path_with_nul_byte():
    message = refused("bad\x00name.jpg", "not a valid file path")
    assert "\x00" not in message
    refused("~\x00name.jpg", "not a valid file path")


def test_image_digest_of_damaged_pil_image(photo):
    data = encode(photo, "PNG")
    with pytest.raises(InputError):
        image_digest(Image.open(io.BytesIO(data[: len(data) // 2])))


# ---------------------------------------------------------------------------
# digest


def test_image_digest(photo, tmp_path):
    png = load_image(encode(photo, "PNG"))
    from_array = load_image(np.asarray(photo))
    digest = image_digest(png)
    assert len(digest) == 64 and int(digest, 16) >= 0
    assert image_digest(from_array) == digest
    assert image_digest(photo.convert("RGBA")) == digest
    flipped = photo.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    assert image_digest(flipped) != digest
    # Same bytes, different shape -> different digest.
    a = Image.new("RGB", (2, 3), (5, 5, 5))
    b = Image.new("RGB", (3, 2), (5, 5, 5))
    assert a.tobytes() == b.tobytes()
    assert image_digest(a) != image_digest(b)
    with pytest.raises(InputError):
        image_digest(b"not an image")


def test_module_does_not_import_torch():
    from helpers import cli_env, run_cli

    src = Path(images.__file__).resolve().parents[1]
    code = "import sys; import dinoscope.images; print('torch' in sys.modules)"
    out = run_cli("-c", code, module=None, env=cli_env(PYTHONPATH=str(src)))
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False"
