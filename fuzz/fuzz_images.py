#!/usr/bin/env python
"""Long-running mutation fuzzer for dinoscope.images.load_image.

Builds small real image files (JPEG, PNG, WebP, GIF, TIFF, BMP, ICO, TGA, PPM, QOI; plain,
alpha, palette, 16-bit, CMYK, animated and multi-page variants) from a bundled sample
photo, mutates their bytes with a seeded random mutator (bit flips, interesting
values, inserts, deletes, truncation, duplication, splicing two files) and feeds each
result to ``load_image(bytes)``. Every input must either give an RGB image of positive
size or raise InputError with a one-line message; anything else is a crash, its input
is saved under --crash-dir and the script exits 1.

    python fuzz/fuzz_images.py --seconds 180
    python fuzz/fuzz_images.py --count 20000 --seed 7
"""

from __future__ import annotations

import argparse
import io
import random
import sys
import time
import traceback
import warnings
from pathlib import Path

try:
    import dinoscope.images  # noqa: F401
except ModuleNotFoundError:  # running from a checkout without an install
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from PIL import Image

from dinoscope.errors import InputError
from dinoscope.images import SAMPLES, load_image

INTERESTING = [
    b"\x00", b"\xff", b"\x7f", b"\x80", b"\x01", b"\x00\x00", b"\xff\xff", b"\x7f\xff", b"\x80\x00",
    b"\x00\x01", b"\x01\x00", b"\xff\xff\xff\xff", b"\x00\x00\x00\x00", b"\x7f\xff\xff\xff", b"\x00\x00\x01\x00",
]


def build_seeds() -> dict[str, bytes]:
    with Image.open(SAMPLES["chelsea"]) as im:
        photo = im.convert("RGB").resize((48, 32))
    rgba = photo.convert("RGBA")
    rgba.putalpha(Image.linear_gradient("L").resize((48, 32)))
    palette = photo.quantize(16)
    frames = [photo, photo.transpose(Image.Transpose.ROTATE_180), photo.convert("L").convert("RGB")]
    exif = Image.Exif()
    exif[0x0112] = 8

    def enc(image: Image.Image, fmt: str, **params) -> bytes | None:
        buf = io.BytesIO()
        try:
            image.save(buf, fmt, **params)
        except (KeyError, OSError, ValueError):  # format not available in this Pillow build
            return None
        return buf.getvalue()

    seeds = {
        "jpeg": enc(photo, "JPEG", quality=80),
        "jpeg-progressive-exif": enc(photo, "JPEG", quality=90, progressive=True, exif=exif.tobytes()),
        "jpeg-cmyk": enc(photo.convert("CMYK"), "JPEG"),
        "jpeg-grey": enc(photo.convert("L"), "JPEG"),
        "png": enc(photo, "PNG"),
        "png-rgba": enc(rgba, "PNG"),
        "png-palette-trns": enc(palette, "PNG", transparency=0),
        "png-16bit": enc(photo.convert("I;16"), "PNG"),
        "png-1bit": enc(photo.convert("1"), "PNG"),
        "png-interlaced-exif": enc(photo, "PNG", exif=exif.tobytes()),
        "apng": enc(frames[0], "PNG", save_all=True, append_images=frames[1:]),
        "webp": enc(photo, "WEBP", quality=70),
        "webp-lossless-alpha": enc(rgba, "WEBP", lossless=True),
        "webp-animated": enc(frames[0], "WEBP", save_all=True, append_images=frames[1:], quality=50),
        "gif": enc(palette, "GIF"),
        "gif-animated": enc(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=40, loop=0),
        "tiff": enc(photo, "TIFF"),
        "tiff-lzw": enc(photo, "TIFF", compression="tiff_lzw"),
        "tiff-deflate-alpha": enc(rgba, "TIFF", compression="tiff_adobe_deflate"),
        "tiff-multipage": enc(frames[0], "TIFF", save_all=True, append_images=frames[1:]),
        "tiff-float": enc(photo.convert("F"), "TIFF"),
        "tiff-cmyk": enc(photo.convert("CMYK"), "TIFF"),
        "bmp": enc(photo, "BMP"),
        "bmp-palette": enc(palette, "BMP"),
        "ico": enc(photo, "ICO"),
        "tga": enc(photo, "TGA"),
        "ppm": enc(photo, "PPM"),
        "qoi": enc(photo, "QOI"),
    }
    return {name: data for name, data in seeds.items() if data}


def mutate(rng: random.Random, data: bytes, seeds: list[bytes]) -> bytes:
    buf = bytearray(data)
    for _ in range(rng.choice([1, 1, 1, 2, 2, 3, 4, 8, 16])):
        if not buf:
            break
        # Half the edits land in the first 64 bytes, where headers live.
        pos = rng.randrange(min(len(buf), 64)) if rng.random() < 0.5 else rng.randrange(len(buf))
        op = rng.randrange(8)
        if op == 0:
            buf[pos] ^= 1 << rng.randrange(8)
        elif op == 1:
            buf[pos] = rng.randrange(256)
        elif op == 2:
            value = rng.choice(INTERESTING)
            buf[pos : pos + len(value)] = value
        elif op == 3:
            buf[pos:pos] = rng.randbytes(rng.randint(1, 32))
        elif op == 4:
            del buf[pos : pos + rng.randint(1, 64)]
        elif op == 5:
            del buf[pos:]
        elif op == 6:
            length = rng.randint(1, 512)
            buf[pos:pos] = buf[pos : pos + length] * rng.randint(1, 4)
        else:  # splice in a piece of another seed
            other = rng.choice(seeds)
            start = rng.randrange(len(other))
            buf[pos : pos + rng.randint(0, 64)] = other[start : start + rng.randint(1, 256)]
    return bytes(buf)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=0, help="stop after this many inputs (0: no limit)")
    parser.add_argument("--seconds", type=float, default=60.0, help="stop after this many seconds (0: no limit)")
    parser.add_argument("--seed", type=int, default=0, help="random seed for the mutator")
    parser.add_argument("--crash-dir", type=Path, default=Path("fuzz-crashes"), help="where crashing inputs are saved")
    parser.add_argument("--keep-going", action="store_true", help="continue after a crash (still exits 1)")
    parser.add_argument("--save-slow", type=float, default=0.0, metavar="MS",
                        help="also save inputs slower than this many milliseconds to --crash-dir (not a failure)")
    args = parser.parse_args(argv)
    if args.count <= 0 and args.seconds <= 0:
        parser.error("give --count or --seconds")

    warnings.simplefilter("ignore")  # Pillow warns about corrupt EXIF etc.; only exceptions matter here
    seeds = build_seeds()
    names = sorted(seeds)
    blobs = [seeds[n] for n in names]
    rng = random.Random(args.seed)
    start = time.monotonic()
    done = accepted = refused = crashed = 0
    slowest = (0.0, "")
    per_seed = {name: [0, 0] for name in names}
    while True:
        if args.count and done >= args.count:
            break
        if args.seconds and time.monotonic() - start >= args.seconds:
            break
        name = rng.choice(names)
        data = mutate(rng, seeds[name], blobs)
        t0 = time.perf_counter()
        try:
            image = load_image(data)
            if image.mode != "RGB" or image.width < 1 or image.height < 1:
                raise AssertionError(f"bad result: mode {image.mode} size {image.size}")
            image.tobytes()
            accepted += 1
            per_seed[name][0] += 1
        except InputError as exc:
            if "\n" in str(exc) or "\r" in str(exc) or not str(exc):
                crashed += 1
                report(args.crash_dir, name, done, data, AssertionError(f"multi-line or empty message: {exc!r}"))
                if not args.keep_going:
                    break
            refused += 1
            per_seed[name][1] += 1
        except Exception as exc:  # noqa: BLE001 - anything else is a finding
            crashed += 1
            report(args.crash_dir, name, done, data, exc)
            if not args.keep_going:
                done += 1
                break
        elapsed = time.perf_counter() - t0
        if args.save_slow and elapsed * 1000 > args.save_slow:
            args.crash_dir.mkdir(parents=True, exist_ok=True)
            (args.crash_dir / f"slow-{name}-{done}-{elapsed * 1000:.0f}ms.bin").write_bytes(data)
        if elapsed > slowest[0]:
            slowest = (elapsed, f"{name} #{done}")
        done += 1
    total = time.monotonic() - start
    survived = done - crashed
    print(f"inputs: {done} in {total:.1f} s ({done / max(total, 1e-9):.0f}/s), seed {args.seed}, {len(seeds)} seed files")
    print(f"survived: {survived}  accepted (RGB image): {accepted}  refused (InputError): {refused}  crashed: {crashed}")
    print(f"slowest input: {slowest[0] * 1000:.0f} ms ({slowest[1]})")
    for name in names:
        ok, no = per_seed[name]
        print(f"  {name:24s} accepted {ok:6d}  refused {no:6d}")
    return 1 if crashed else 0


def report(crash_dir: Path, name: str, index: int, data: bytes, exc: BaseException) -> None:
    crash_dir.mkdir(parents=True, exist_ok=True)
    path = crash_dir / f"crash-{name}-{index}.bin"
    path.write_bytes(data)
    print(f"CRASH on input #{index} (mutated {name}), saved to {path}:", file=sys.stderr)
    traceback.print_exception(exc, file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
