"""Draw the README pictures of segments, search, atlas and propagate with the CLI (random ViT-B/16 weights).

    PYTHONPATH=src python docs/insights_pictures.py          # writes docs/img/insights-*.jpg

Each picture is the command's own output (the propagation strip: three of its overlay frames), saved as
a JPEG small enough for the README.
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from dinoscope.cli import main
from dinoscope.video import VideoWriter

HERE = Path(__file__).resolve().parent
SAMPLES = HERE.parent / "src" / "dinoscope" / "samples"
MODEL = ["--model", "random:vitb16", "--device", "cpu"]
os.environ["DINOSCOPE_CACHE"] = "off"  # pictures of random weights have no place in the feature cache


def run(*args) -> None:
    code = main([str(a) for a in args] + MODEL)
    if code:
        sys.exit(f"dinoscope {args[0]} failed with exit code {code}")


def jpeg(picture: Image.Image, name: str, width: int = 900) -> None:
    if picture.width > width:
        picture = picture.resize((width, round(picture.height * width / picture.width)), Image.Resampling.LANCZOS)
    path = HERE / "img" / name
    picture.convert("RGB").save(path, quality=82, optimize=True)
    print(f"{path}: {picture.width}x{picture.height}, {path.stat().st_size // 1024} KB")


def side_by_side(pictures, gap: int = 6) -> Image.Image:
    height = max(p.height for p in pictures)
    canvas = Image.new("RGB", (sum(p.width for p in pictures) + gap * (len(pictures) - 1), height), "white")
    x = 0
    for p in pictures:
        canvas.paste(p, (x, 0))
        x += p.width + gap
    return canvas


def below(top: Image.Image, bottom: Image.Image, gap: int = 6) -> Image.Image:
    canvas = Image.new("RGB", (max(top.width, bottom.width), top.height + gap + bottom.height), "white")
    canvas.paste(top, (0, 0))
    canvas.paste(bottom, (0, top.height + gap))
    return canvas


def clip(path: Path, width: int = 320, height: int = 192, frames: int = 12) -> Image.Image:
    """A disc and a square moving over a striped background; returns the first frame's two-colour mask."""
    y, x = np.mgrid[0:height, 0:width]
    background = np.stack([120 + 60 * np.sin(x / 9.0), 110 + 40 * np.cos(y / 7.0), np.full_like(x, 90.0)], -1)
    disc = lambda t: (40 + 12 * t, 50, 100 + 12 * t, 110)  # noqa: E731
    square = lambda t: (220 - 6 * t, 100 + 3 * t, 280 - 6 * t, 160 + 3 * t)  # noqa: E731
    with VideoWriter(path, 8) as writer:
        for t in range(frames):
            frame = Image.fromarray(background.astype(np.uint8))
            draw = ImageDraw.Draw(frame)
            draw.ellipse(disc(t), fill=(250, 220, 40))
            draw.rectangle(square(t), fill=(40, 90, 240))
            writer.write(frame)
    mask = Image.new("RGB", (width, height))
    draw = ImageDraw.Draw(mask)
    draw.ellipse(disc(0), fill=(255, 0, 0))
    draw.rectangle(square(0), fill=(0, 255, 0))
    return mask


def main_pictures() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        run("segments", SAMPLES / "chelsea.jpg", SAMPLES / "coffee.jpg", "--k", "6", "--sharpen", "--out", out)
        jpeg(side_by_side([Image.open(out / "chelsea_cosegments_k6_sharp.png"),
                           Image.open(out / "coffee_cosegments_k6_sharp.png")]),
             "insights-segments.jpg")
        run("search", SAMPLES / "chelsea.jpg", "--pixel", "150,120", "--in", SAMPLES, "--top", "9",
            "--out", out)
        jpeg(Image.open(out / "chelsea_search_sheet.png"), "insights-search.jpg")
        run("atlas", SAMPLES / "chelsea.jpg", "--layers", "0,3,6,9,-1", "--out", out)
        atlas, cka = Image.open(out / "chelsea_atlas.png"), Image.open(out / "chelsea_cka.png")
        jpeg(below(atlas, cka), "insights-atlas.jpg")
        mask = clip(out / "shapes.mp4")
        mask.save(out / "shapes_mask.png")
        run("propagate", out / "shapes.mp4", "--mask", out / "shapes_mask.png", "--out", out)
        with av_frames(out / "shapes_propagated.mp4") as frames:
            jpeg(side_by_side([frames[0], frames[5], frames[11]]), "insights-propagate.jpg")


class av_frames:
    """The decoded frames of a video, as a context manager (the container is closed on exit)."""

    def __init__(self, path: Path):
        import av

        self.container = av.open(str(path))

    def __enter__(self):
        return [f.to_image() for f in self.container.decode(self.container.streams.video[0])]

    def __exit__(self, *exc):
        self.container.close()


if __name__ == "__main__":
    main_pictures()
