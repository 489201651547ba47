"""Videos: GIF frames and their timing, MP4 of any frame size, and the errors before anything is played."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageSequence

from services.evaluation import recording
from services.evaluation.recording import GifWriter, Mp4Writer, RenderingError, open_video, video_suffix


def frames(count: int, height: int, width: int) -> list[np.ndarray]:
    """Frames that differ from each other (a bar moving right), so no encoder merges two."""
    images = []
    for index in range(count):
        image = np.zeros((height, width, 3), np.uint8)
        image[:, index % width] = (255, 128, 0)
        images.append(image)
    return images


def test_a_gif_holds_each_frame_for_its_share_of_a_second(tmp_path: Path) -> None:
    path = tmp_path / "episode.gif"
    writer = open_video(path, fps=50)
    assert isinstance(writer, GifWriter)
    for frame in frames(6, 20, 30):
        writer.add(frame)
    writer.close()
    with Image.open(path) as image:
        assert image.size == (30, 20)
        durations = [frame.info["duration"] for frame in ImageSequence.Iterator(image)]
    assert durations == [20] * 6
    assert writer.frames == 6


def test_an_mp4_of_odd_sized_frames_is_padded_to_even_ones(tmp_path: Path) -> None:
    imageio_ffmpeg = pytest.importorskip("imageio_ffmpeg")
    path = tmp_path / "episode.mp4"
    writer = open_video(path, fps=15)
    assert isinstance(writer, Mp4Writer)
    for frame in frames(7, 21, 33):
        writer.add(frame)
    writer.close()
    reader = imageio_ffmpeg.read_frames(str(path))
    metadata = next(reader)
    assert metadata["size"] == (34, 22)
    assert sum(1 for _ in reader) == 7


def test_frames_that_are_not_rgb_images_are_refused(tmp_path: Path) -> None:
    writer = GifWriter(tmp_path / "episode.gif", fps=30)
    writer.add(np.zeros((4, 4), np.uint8))  # grayscale: made RGB
    with pytest.raises(RenderingError, match=r"shape \(4, 4, 4\) and dtype uint8, not an RGB image"):
        writer.add(np.zeros((4, 4, 4), np.uint8))
    with pytest.raises(RenderingError, match="dtype float32"):
        writer.add(np.zeros((4, 4, 3), np.float32))


def test_auto_is_mp4_with_an_encoder_and_gif_without(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(recording, "mp4_encoder", lambda: "/usr/bin/ffmpeg")
    assert (video_suffix("auto"), video_suffix("gif")) == ("mp4", "gif")
    monkeypatch.setattr(recording, "mp4_encoder", lambda: None)
    assert video_suffix("auto") == "gif"
    with pytest.raises(RenderingError, match=r"need imageio-ffmpeg \(pip install imageio-ffmpeg\)"):
        video_suffix("mp4")


def test_rendering_needs_a_display_on_linux(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "platform", "linux")
    monkeypatch.delenv("DISPLAY", raising=False)
    monkeypatch.delenv("WAYLAND_DISPLAY", raising=False)
    with pytest.raises(RenderingError, match="--render needs a display"):
        recording.check_display()
    monkeypatch.setenv("WAYLAND_DISPLAY", "wayland-0")
    recording.check_display()
