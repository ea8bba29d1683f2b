"""Video: PCA colours with one basis for every frame, and a query point followed through the clip.

Reading and writing use PyAV (``pip install "dinoscope[video]"``), which ships its own FFmpeg,
so no system ffmpeg is needed. Frames are decoded as a stream; the PCA basis is fitted over
all (strided) frames with the streaming accumulator, so memory does not grow with the clip's
length except for the GIFs, whose (downscaled) frames Pillow holds until it writes them.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Iterator

from .analyses.streaming import StreamingPCA
from .collections import scratch_extractor
from .errors import InputError
from .files import file_kind, safe_name

INSTALL = 'pip install "dinoscope[video]"'
GIF_MAX_SIDE = 480


def require_av():
    try:
        import av
    except ImportError:
        raise InputError(f"reading and writing video needs PyAV, which is not installed; {INSTALL}") from None
    return av


@dataclass
class VideoInfo:
    width: int
    height: int
    fps: float
    frames: int  # as the container reports it (0 when unknown)


def _open(path):
    av = require_av()
    label = os.fspath(path)
    kind = file_kind(path)
    if kind is not None:
        raise InputError(f"{label} is {kind}, not a video file; give an mp4, mkv, webm, mov or avi file")
    if not Path(path).is_file():
        raise InputError(f"no such video file: {label}; check the path")
    try:
        container = av.open(label)
    except Exception as exc:  # av.error.* (InvalidDataError, ...) all mean the file cannot be read as video
        raise InputError(f"{label} is not a readable video ({type(exc).__name__}); give an mp4, mkv, webm, mov or avi "
                         "file") from None
    if not container.streams.video:
        container.close()
        raise InputError(f"{label} holds no video stream; give a video file")
    return container


def probe(path) -> VideoInfo:
    with _open(path) as container:
        stream = container.streams.video[0]
        rate = stream.average_rate or stream.guessed_rate or 25
        return VideoInfo(stream.codec_context.width, stream.codec_context.height, float(rate), int(stream.frames or 0))


def iter_frames(path, *, stride: int = 1, max_frames: int | None = None) -> Iterator:
    """RGB PIL frames: every `stride`-th frame from the first, at most `max_frames` of them."""
    if stride < 1:
        raise InputError(f"stride= must be at least 1, got {stride}")
    if max_frames is not None and max_frames < 1:
        raise InputError(f"max_frames= must be at least 1, got {max_frames}")
    taken = decoded = 0
    with _open(path) as container:
        stream = container.streams.video[0]
        try:
            for i, frame in enumerate(container.decode(stream)):
                decoded = i + 1
                if i % stride:
                    continue
                yield frame.to_image().convert("RGB")
                taken += 1
                if max_frames is not None and taken >= max_frames:
                    return
        except InputError:
            raise
        except Exception as exc:
            if taken == 0:
                raise InputError(f"{os.fspath(path)} could not be decoded ({type(exc).__name__}: {exc}); "
                                 "re-encode it as H.264 mp4") from None
            # a damaged tail: keep the frames decoded so far, and say so
            logging.getLogger("dinoscope").warning(
                "%s: decoding stopped after frame %d (%s: %s); the damaged rest of the video is skipped",
                os.fspath(path), decoded, type(exc).__name__, " ".join(str(exc).split()))
            return


class VideoWriter:
    """Write RGB PIL frames to an mp4 (H.264, falling back to MPEG-4 Part 2) atomically.

    Frames are padded with black to even sizes (H.264 with 4:2:0 colour needs them); the
    file appears under its name only once it is complete.
    """

    def __init__(self, path, fps: float):
        self.path, self.fps = Path(path), fps
        self._atomic = self._container = self._stream = None
        self.frames = 0

    def __enter__(self):
        from .files import atomic_path

        self._atomic = atomic_path(self.path)
        self._tmp = self._atomic.__enter__()
        return self

    def _start(self, width: int, height: int):
        av = require_av()
        self._container = av.open(os.fspath(self._tmp), mode="w", format="mp4")
        rate = Fraction(self.fps).limit_denominator(1000) if self.fps > 0 else Fraction(25)
        for codec in ("libx264", "mpeg4"):
            try:
                stream = self._container.add_stream(codec, rate=rate)
                break
            except Exception:  # codec missing from this FFmpeg build
                continue
        else:
            raise InputError("this PyAV build can encode neither H.264 nor MPEG-4 video; reinstall it with "
                             f"{INSTALL}")
        stream.width, stream.height = width + width % 2, height + height % 2
        stream.pix_fmt = "yuv420p"
        self._stream = stream

    def write(self, image) -> None:
        av = require_av()
        if self._stream is None:
            self._start(*image.size)
        w, h = self._stream.width, self._stream.height
        if image.size != (w, h):
            from PIL import Image

            canvas = Image.new("RGB", (w, h))
            canvas.paste(image.crop((0, 0, min(w, image.width), min(h, image.height))), (0, 0))
            image = canvas
        for packet in self._stream.encode(av.VideoFrame.from_image(image.convert("RGB"))):
            self._container.mux(packet)
        self.frames += 1

    def __exit__(self, exc_type, exc, tb):
        try:
            if self._container is not None:
                if exc_type is None:
                    for packet in self._stream.encode():
                        self._container.mux(packet)
                self._container.close()
            elif exc_type is None:
                raise InputError("no frames to write; the video gave none")
        except BaseException as error:
            self._atomic.__exit__(type(error), error, error.__traceback__)
            raise
        return self._atomic.__exit__(exc_type, exc, tb)


def _gif_frame(image):
    from PIL import Image

    scale = min(1.0, GIF_MAX_SIDE / max(image.size))
    if scale < 1.0:
        image = image.resize((max(1, round(image.width * scale)), max(1, round(image.height * scale))),
                             Image.Resampling.BILINEAR)
    return image


def write_gif(frames: list, path, fps: float) -> Path:
    """An endlessly looping GIF, written atomically."""
    from .files import atomic_path

    if not frames:
        raise InputError("no frames to write; the video gave none")
    duration = max(20, round(1000 / fps)) if fps > 0 else 100
    with atomic_path(path) as tmp:
        frames[0].save(tmp, format="GIF", save_all=True, append_images=frames[1:], duration=duration, loop=0)
    return Path(path)


@dataclass
class VideoResult:
    frames: int = 0
    size: tuple[int, int] = (0, 0)
    fps: float = 0.0
    outputs: list = field(default_factory=list)
    basis_path: str | None = None
    query: int = 0


def _features(extractor, frames_iter, batch: int):
    """(frame, Features) in order, extracting `batch` frames per forward pass."""
    chunk = []
    for frame in frames_iter:
        chunk.append(frame)
        if len(chunk) >= batch:
            yield from zip(chunk, extractor.features_of(chunk))
            chunk = []
    if chunk:
        yield from zip(chunk, extractor.features_of(chunk))


def run_video(path, extractor, out, *, stride: int = 1, max_frames: int | None = None, query=None, basis=None,
              basis_path=None, progress=None, upsample: str = "nearest") -> VideoResult:
    """Write OUT/<stem>_pca.{mp4,gif} (frame | PCA colours, one basis for the clip) and
    OUT/<stem>_similarity.{mp4,gif} (the query from the first frame followed through every frame).

    `query` is anything `similarity_map` takes (default: the centre patch of the first frame);
    `basis` a PCABasis to apply instead of fitting one (the fitted one is saved to `basis_path`,
    default OUT/<stem>_pca_basis.safetensors). `progress(phase, done, total)` reports frames;
    `upsample` is how maps reach the frame's pixels (nearest, bilinear, guided).
    """
    from . import render
    from .analyses import query_index
    from .views import pca_view, similarity_view

    require_av()
    path, out = Path(path), Path(out)
    info = probe(path)
    total = info.frames // stride + (1 if info.frames % stride else 0) if info.frames else 0
    if max_frames:
        total = min(total, max_frames) if total else max_frames
    fps = info.fps / stride
    stem = safe_name(path.stem, "video")
    result = VideoResult(fps=fps)
    frames = lambda: iter_frames(path, stride=stride, max_frames=max_frames)  # noqa: E731
    batch = max(1, getattr(extractor, "batch_size", 8))

    with scratch_extractor(extractor, out) as extractor:  # every frame is read by two or three passes
        # pass 1: similarity video (needs only the first frame's query) and the PCA moments
        accumulator = StreamingPCA(3)
        sim_gif = []
        first = None
        with VideoWriter(out / f"{stem}_similarity.mp4", fps) as sim_video:
            for i, (frame, feats) in enumerate(_features(extractor, frames(), batch)):
                if first is None:
                    first = feats
                    g = feats.geometry
                    index = query_index(feats, g.index(g.rows // 2, g.cols // 2) if query is None else query)
                    result.query, result.size = index, frame.size
                if feats.geometry.grid != first.geometry.grid:
                    raise InputError(f"frame {i} has a different size from the first; the video changes resolution")
                picture = similarity_view(feats, index, frame, query_features=first, mark=False, upsample=upsample)
                if i == 0:
                    picture = render.outline_patch(picture, feats.geometry, index) if index >= 0 else picture
                sim_video.write(picture)
                sim_gif.append(_gif_frame(picture))
                if basis is None:
                    accumulator.observe(feats)
                if progress:
                    progress("frames: similarity" + (", fitting PCA" if basis is None else ""), i + 1, total or i + 1)
        result.frames = sim_video.frames
        result.outputs += [out / f"{stem}_similarity.mp4", write_gif(sim_gif, out / f"{stem}_similarity.gif", fps)]
        del sim_gif
        # pass 2: the colour range of the projections (the basis is then complete and saved)
        if basis is None:
            accumulator.fix_directions()
            for i, (_, feats) in enumerate(_features(extractor, frames(), batch)):
                accumulator.observe(feats)
                if progress:
                    progress("frames: PCA colour range", i + 1, result.frames)
            basis = accumulator.finish()
            target = Path(basis_path) if basis_path is not None else out / f"{stem}_pca_basis.safetensors"
            basis.save(target)
            result.basis_path = os.fspath(target)
        elif basis.mean.shape[0] != first.dim:
            raise InputError(f"the PCA basis is for {basis.mean.shape[0]}-dim features, this model gives {first.dim}")
        # pass 3: frame | PCA colours
        pca_gif = []
        with VideoWriter(out / f"{stem}_pca.mp4", fps) as pca_video:
            for i, (frame, feats) in enumerate(_features(extractor, frames(), batch)):
                picture = render.side_by_side([frame, pca_view(feats, basis, upsample=upsample, guide=frame)])
                pca_video.write(picture)
                pca_gif.append(_gif_frame(picture))
                if progress:
                    progress("frames: PCA video", i + 1, result.frames)
        result.outputs += [out / f"{stem}_pca.mp4", write_gif(pca_gif, out / f"{stem}_pca.gif", fps)]
    return result
