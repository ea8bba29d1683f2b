"""Property test: mutated image files load as RGB or raise InputError, never anything else."""

from __future__ import annotations

import io
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

try:
    import dinoscope.images  # noqa: F401
except ModuleNotFoundError:  # running from a checkout without an install
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from dinoscope.errors import InputError
from dinoscope.images import SAMPLES, load_image


def _seeds() -> dict[str, list[bytes]]:
    with Image.open(SAMPLES["chelsea"]) as im:
        photo = im.convert("RGB").resize((48, 32))
    rgba = photo.convert("RGBA")
    rgba.putalpha(Image.linear_gradient("L").resize((48, 32)))
    palette = photo.quantize(16)
    frames = [photo, photo.transpose(Image.Transpose.ROTATE_180), photo.convert("L").convert("RGB")]
    exif = Image.Exif()
    exif[0x0112] = 6

    def enc(image: Image.Image, fmt: str, **params) -> bytes:
        buf = io.BytesIO()
        image.save(buf, fmt, **params)
        return buf.getvalue()

    return {
        "JPEG": [
            enc(photo, "JPEG", quality=80),
            enc(photo, "JPEG", quality=90, progressive=True, exif=exif.tobytes()),
            enc(photo.convert("CMYK"), "JPEG"),
        ],
        "PNG": [
            enc(photo, "PNG"),
            enc(rgba, "PNG"),
            enc(palette, "PNG", transparency=0),
            enc(photo.convert("I;16"), "PNG"),
        ],
        "WEBP": [
            enc(photo, "WEBP", quality=70),
            enc(rgba, "WEBP", lossless=True),
            enc(frames[0], "WEBP", save_all=True, append_images=frames[1:], quality=50),
        ],
        "GIF": [
            enc(palette, "GIF"),
            enc(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=40, loop=0),
        ],
        "TIFF": [
            enc(photo, "TIFF"),
            enc(photo, "TIFF", compression="tiff_lzw"),
            enc(rgba, "TIFF", compression="tiff_adobe_deflate"),
            enc(frames[0], "TIFF", save_all=True, append_images=frames[1:]),
        ],
    }


SEEDS = _seeds()

# Positions favour the header, where sizes, modes and chunk lengths live.
position = st.one_of(st.integers(0, 63), st.integers(0, 1 << 16))
interesting = st.sampled_from(
    [b"\x00", b"\xff", b"\x7f", b"\x80", b"\x00\x00", b"\xff\xff", b"\x7f\xff", b"\x80\x00", b"\xff\xff\xff\xff",
     b"\x00\x00\x00\x00", b"\x00\x01", b"\x01\x00"]
)
mutation = st.one_of(
    st.tuples(st.just("flip"), position, st.integers(0, 7)),
    st.tuples(st.just("set"), position, st.one_of(st.binary(min_size=1, max_size=8), interesting)),
    st.tuples(st.just("insert"), position, st.binary(min_size=1, max_size=32)),
    st.tuples(st.just("delete"), position, st.integers(1, 64)),
    st.tuples(st.just("truncate"), position),
    st.tuples(st.just("duplicate"), position, st.integers(1, 256)),
)


def mutate(data: bytes, mutations) -> bytes:
    buf = bytearray(data)
    for op, pos, *rest in mutations:
        if not buf:
            break
        pos %= len(buf) + (1 if op == "insert" else 0)
        if op == "flip":
            if pos < len(buf):
                buf[pos] ^= 1 << rest[0]
        elif op == "set":
            buf[pos : pos + len(rest[0])] = rest[0]
        elif op == "insert":
            buf[pos:pos] = rest[0]
        elif op == "delete":
            del buf[pos : pos + rest[0]]
        elif op == "truncate":
            del buf[pos:]
        elif op == "duplicate":
            buf[pos:pos] = buf[pos : pos + rest[0]]
    return bytes(buf)


# A mutated size field can declare tens of millions of pixels that then really decode
# (about a second each); a lower limit keeps every example well inside the deadline.
# fuzz/fuzz_images.py runs with the default limit.
MAX_PIXELS = 4_000_000


def check(data: bytes) -> None:
    try:
        image = load_image(data, max_pixels=MAX_PIXELS)
    except InputError as exc:
        message = str(exc)
        assert message and "\n" not in message and "\r" not in message, message
        return
    assert isinstance(image, Image.Image)
    assert image.mode == "RGB"
    assert image.width >= 1 and image.height >= 1
    image.tobytes()


def test_seeds_load():
    for fmt, seeds in SEEDS.items():
        for data in seeds:
            image = load_image(data)
            assert image.mode == "RGB", fmt
            assert image.size in ((48, 32), (32, 48)), fmt


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore")
@pytest.mark.parametrize("fmt", sorted(SEEDS))
@settings(
    max_examples=150,
    deadline=2000,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(data=st.data())
def test_mutated_files_load_or_raise_input_error(fmt, data):
    seed = data.draw(st.sampled_from(SEEDS[fmt]), label="seed")
    mutations = data.draw(st.lists(mutation, min_size=1, max_size=8), label="mutations")
    check(mutate(seed, mutations))


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore")
@settings(max_examples=100, deadline=2000)
@given(st.binary(max_size=512))
def test_random_bytes(blob):
    check(blob)


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore")
@settings(max_examples=60, deadline=2000)
@given(fmt=st.sampled_from(sorted(SEEDS)), cut=st.integers(0, 10_000))
def test_truncated_prefixes(fmt, cut):
    for seed in SEEDS[fmt]:
        check(seed[: cut % max(1, len(seed))])
