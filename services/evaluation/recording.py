"""Videos of episodes: MP4 through imageio-ffmpeg's ffmpeg where it is installed, else GIF through Pillow."""

from __future__ import annotations

import os
import sys
from collections.abc import Generator
from pathlib import Path
from typing import Any, Literal, Protocol

import numpy as np
from numpy.typing import NDArray

VideoFormat = Literal["auto", "mp4", "gif"]
# The Atari 2600 draws 60 frames a second; a step of the preprocessed game is frame_skip of them.
ATARI_FRAMES_PER_S = 60.0


class RenderingError(ValueError):
    """An episode that cannot be shown or recorded here; the message says what is missing."""


class VideoWriter(Protocol):
    path: Path
    frames: int

    def add(self, frame: Any) -> None:
        """Appends one rendered frame (``[H, W, 3]`` uint8)."""
        ...

    def close(self) -> None:
        """Finishes the file."""
        ...


def mp4_encoder() -> str | None:
    """The ffmpeg executable imageio-ffmpeg brings; None without the package or its binary."""
    try:
        import imageio_ffmpeg  # type: ignore[import-untyped]  # noqa: PLC0415 (optional)
    except ImportError:
        return None
    try:
        return str(imageio_ffmpeg.get_ffmpeg_exe())
    except RuntimeError:
        return None


def video_suffix(choice: VideoFormat) -> str:
    """``mp4`` or ``gif``: auto is MP4 where an encoder is present; RenderingError for MP4 without one."""
    if choice == "gif":
        return "gif"
    if mp4_encoder() is not None:
        return "mp4"
    if choice == "mp4":
        raise RenderingError(
            "MP4 videos need imageio-ffmpeg (pip install imageio-ffmpeg); "
            "--video-format gif needs nothing more"
        )
    return "gif"


def open_video(path: Path, fps: float) -> VideoWriter:
    """A writer of ``path`` (its suffix picks the format), showing ``fps`` frames a second."""
    return Mp4Writer(path, fps) if path.suffix == ".mp4" else GifWriter(path, fps)


def _rgb(frame: Any) -> NDArray[np.uint8]:
    image = np.asarray(frame)
    if image.ndim == 2:
        image = np.repeat(image[:, :, None], 3, axis=2)
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise RenderingError(
            f"render() returned an array of shape {image.shape} and dtype {image.dtype}, not an RGB image"
        )
    return np.ascontiguousarray(image)


class Mp4Writer:
    """H.264 in yuv420p (the pixel format players expect), frames streamed to ffmpeg as they come."""

    def __init__(self, path: Path, fps: float) -> None:
        self.path = path
        self.frames = 0
        self._fps = fps
        self._size = (0, 0)  # height, width: the first frame's
        self._encoder: Generator[None, bytes | None, None] | None = None

    def add(self, frame: Any) -> None:
        image = _rgb(frame)
        # yuv420p needs even sides: a frame of odd size gets one black row or column.
        height, width = image.shape[0] + image.shape[0] % 2, image.shape[1] + image.shape[1] % 2
        if (height, width) != image.shape[:2]:
            image = np.pad(image, ((0, height - image.shape[0]), (0, width - image.shape[1]), (0, 0)))
        if self._encoder is None:
            import imageio_ffmpeg  # noqa: PLC0415 (optional)

            self._size = (height, width)
            self._encoder = imageio_ffmpeg.write_frames(
                str(self.path),
                (width, height),
                fps=self._fps,
                codec="libx264",
                macro_block_size=1,
                ffmpeg_log_level="error",
            )
            self._encoder.send(None)  # starts ffmpeg
        if (height, width) != self._size:
            raise RenderingError(f"a {width}x{height} frame in a {self._size[1]}x{self._size[0]} video")
        self._encoder.send(image.tobytes())
        self.frames += 1

    def close(self) -> None:
        if self._encoder is not None:
            self._encoder.close()  # waits for ffmpeg to finish the file
            self._encoder = None


class GifWriter:
    """An animated GIF, looping; each frame is reduced to its own 256-colour palette as it comes."""

    def __init__(self, path: Path, fps: float) -> None:
        self.path = path
        self.frames = 0
        # GIF delays are whole hundredths of a second.
        self._duration_ms = max(10, round(100 / fps) * 10)
        self._images: list[Any] = []

    def add(self, frame: Any) -> None:
        from PIL import Image  # noqa: PLC0415 (Pillow comes with matplotlib)

        # Fast octree: several times faster than median cut, and as good for rendered scenes.
        self._images.append(Image.fromarray(_rgb(frame)).quantize(256, method=Image.Quantize.FASTOCTREE))
        self.frames += 1

    def close(self) -> None:
        if not self._images:
            return
        first, *rest = self._images
        first.save(self.path, save_all=True, append_images=rest, duration=self._duration_ms, loop=0)
        self._images = []


def check_display() -> None:
    """RenderingError where a window cannot open: Linux without an X11 or Wayland display."""
    if sys.platform.startswith("linux") and not (
        os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")
    ):
        raise RenderingError(
            "--render needs a display, and neither DISPLAY nor WAYLAND_DISPLAY is set; "
            "--record DIR writes the episodes to videos instead"
        )
