"""Video: a clip made here round-trips through `dinoscope video` (frame count, size, one basis)."""

from __future__ import annotations

import builtins
import os

import numpy as np
import pytest
import torch
from PIL import Image

from dinoscope.cli import main

if os.environ.get("CI"):  # CI installs the extra (it is in [test]): a missing one must fail, not skip
    import av
else:
    av = pytest.importorskip("av")

W, H, N = 80, 48, 12  # frames 80x48: a 5x3 patch grid for a /16 model


def make_clip(path, n=N, fps=10):
    """A square moving right over a fixed smooth background, encoded with H.264."""
    from dinoscope.video import VideoWriter

    y, x = np.mgrid[0:H, 0:W]
    background = np.stack([x * 255 // W, y * 255 // H, np.full_like(x, 128)], -1).astype(np.uint8)
    frames = []
    with VideoWriter(path, fps) as writer:
        for t in range(n):
            a = background.copy()
            a[10:30, 4 * t:4 * t + 20] = (255, 40, 40)
            frames.append(Image.fromarray(a))
            writer.write(frames[-1])
    return frames


def decoded(path):
    with av.open(str(path)) as c:
        return [f.to_image() for f in c.decode(c.streams.video[0])]


def test_clip_round_trip(tmp_path):
    clip = tmp_path / "clip.mp4"
    made = make_clip(clip)
    from dinoscope.video import iter_frames, probe

    info = probe(clip)
    assert (info.width, info.height) == (W, H) and info.fps == pytest.approx(10)
    frames = list(iter_frames(clip))
    assert len(frames) == N and frames[0].size == (W, H)
    def diff(a, b):
        return np.abs(np.asarray(a, float) - np.asarray(b, float)).mean()

    assert diff(frames[5], made[5]) < 6 < diff(frames[5], made[2])  # lossy, but the same frames in the same order
    assert len(list(iter_frames(clip, stride=3))) == 4 and len(list(iter_frames(clip, stride=2, max_frames=4))) == 4


@pytest.mark.slow
def test_video_command_pca_and_similarity(tmp_path, tiny_model_dir, capsys):
    clip = tmp_path / "walk.mp4"
    make_clip(clip)
    out = tmp_path / "out"
    code = main(["video", str(clip), "-m", str(tiny_model_dir), "-o", str(out), "--stride", "2", "--max-frames", "5",
                 "--pixel", "10,20", "--no-cache"])
    stdout, stderr = capsys.readouterr()
    assert code == 0, stderr
    assert "5 frame(s) of 80x48 at 5.00 fps" in stdout
    pca_frames = decoded(out / "walk_pca.mp4")
    sim_frames = decoded(out / "walk_similarity.mp4")
    assert len(pca_frames) == len(sim_frames) == 5
    assert pca_frames[0].size == (2 * W, H) and sim_frames[0].size == (W, H)  # frame | PCA, side by side
    with Image.open(out / "walk_pca.gif") as gif:
        assert gif.n_frames == 5 and gif.size == (2 * W, H)
    with Image.open(out / "walk_similarity.gif") as gif:
        assert gif.n_frames == 5
    # one basis for the whole clip: the saved basis is the fit over all used frames' patches at once
    from dinoscope.analyses import PCABasis
    from dinoscope.features import Extractor
    from dinoscope.video import iter_frames

    ex = Extractor(tiny_model_dir)
    feats = ex.features_of(list(iter_frames(clip, stride=2, max_frames=5)))
    saved = PCABasis.load(out / "walk_pca_basis.safetensors")
    whole = PCABasis.fit(feats, 3)
    for name in ("mean", "components", "low", "high"):
        torch.testing.assert_close(getattr(saved, name), getattr(whole, name), rtol=1e-4, atol=1e-4)
    assert not list(out.glob(".*"))  # scratch cache and temporary files are gone

    # a saved basis is applied, not refitted
    code = main(["video", str(clip), "-m", str(tiny_model_dir), "-o", str(tmp_path / "again"), "--max-frames", "2",
                 "--pca-basis", str(out / "walk_pca_basis.safetensors"), "--no-progress"])
    assert code == 0 and not list((tmp_path / "again").glob("*basis*"))


def test_video_errors_are_one_line(tmp_path, tiny_model_dir, capsys, monkeypatch):
    not_video = tmp_path / "notes.mp4"
    not_video.write_text("hello")
    for args, words in [([str(not_video)], "not a readable video"), ([str(tmp_path / "none.mp4")], "no such video"),
                        ([str(not_video), "--stride", "0"], "")]:
        code = main(["video", *args, "-m", str(tiny_model_dir), "-o", str(tmp_path / "o")])
        err = capsys.readouterr().err
        assert code == 2 and err.count("\n") == 1 and words in err, err

    real_import = builtins.__import__

    def no_av(name, *a, **k):
        if name == "av" or name.startswith("av."):
            raise ImportError("No module named 'av'")
        return real_import(name, *a, **k)

    monkeypatch.setattr(builtins, "__import__", no_av)
    code = main(["video", str(not_video), "-m", str(tiny_model_dir)])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and 'pip install "dinoscope[video]"' in err


def test_a_damaged_tail_is_skipped_with_a_notice(tmp_path, monkeypatch, caplog):
    import contextlib
    import logging

    from dinoscope import video

    clip = tmp_path / "clip.mp4"
    make_clip(clip, n=6)
    real_open = video._open

    @contextlib.contextmanager
    def damaged(path):
        with real_open(path) as container:
            real_decode = container.decode

            class Wrapped:
                streams = container.streams

                def decode(self, stream):
                    for i, frame in enumerate(real_decode(stream)):
                        if i == 4:
                            raise av.error.InvalidDataError(1094995529, "Invalid data found when processing input")
                        yield frame

            yield Wrapped()

    monkeypatch.setattr(video, "_open", damaged)
    with caplog.at_level(logging.WARNING, logger="dinoscope"):
        frames = list(video.iter_frames(clip))
    assert len(frames) == 4
    notices = [r.getMessage() for r in caplog.records if r.name == "dinoscope"]
    assert len(notices) == 1 and "after frame 4" in notices[0] and "skipped" in notices[0], notices
