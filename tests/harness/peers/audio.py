"""Real audio made by the imageio-ffmpeg binary (cached), plus corrupt and non-audio samples for upload tests."""

from __future__ import annotations

import logging
import subprocess
import threading
from pathlib import Path

import imageio_ffmpeg

logger = logging.getLogger(__name__)

# Encoder per container; all ship in imageio-ffmpeg's static build (SPEC section 10).
CODECS = {"wav": "pcm_s16le", "mp3": "libmp3lame", "ogg": "libvorbis", "flac": "flac", "m4a": "aac"}
# How many leading bytes carry each format's magic; corrupt samples keep them so they still look like audio.
MAGIC_BYTES = {"wav": 12, "mp3": 10, "ogg": 4, "flac": 4, "m4a": 12}
# A 1x1 PNG: a real file that is not audio.
PNG_1X1 = bytes.fromhex(
    "89504e470d0a1a0a0000000d4948445200000001000000010806000000"
    "1f15c4890000000d49444154789c6360000002000154a24f5d0000000049454e44ae426082"
)


def ffmpeg_exe() -> str:
    """The ffmpeg binary shipped by imageio-ffmpeg."""
    return imageio_ffmpeg.get_ffmpeg_exe()


class AudioFactory:
    """Makes audio files into `directory`, once per distinct request (cheap to ask again)."""

    def __init__(self, directory: Path, *, timeout: float = 30.0) -> None:
        self.directory = directory
        self.timeout = timeout
        self._lock = threading.RLock()  # corrupt() and truncated() call make() while holding it
        directory.mkdir(parents=True, exist_ok=True)

    def make(
        self,
        fmt: str = "wav",
        seconds: float = 1.0,
        sample_rate: int = 22050,
        *,
        frequency: float = 440.0,
        channels: int = 1,
    ) -> Path:
        """A real `fmt` file with a sine tone of `seconds` at `sample_rate` (cached by its parameters)."""
        if fmt not in CODECS:
            raise ValueError(f"unsupported format {fmt!r}; choose from {sorted(CODECS)}")
        path = self.directory / f"tone-{frequency:g}hz-{seconds:g}s-{sample_rate}hz-{channels}ch.{fmt}"
        with self._lock:
            if not path.exists():
                self._encode(path, fmt, seconds, sample_rate, frequency, channels)
        return path

    def corrupt(self, fmt: str = "mp3") -> Path:
        """A file that starts like `fmt` (its magic bytes) but that FFmpeg cannot decode."""
        path = self.directory / f"corrupt.{fmt}"
        with self._lock:
            if not path.exists():
                head = self.make(fmt).read_bytes()[: MAGIC_BYTES[fmt]]
                garbage = bytes((i * 37 + 11) % 256 for i in range(4096))  # deterministic, never valid frames
                path.write_bytes(head + garbage)
        return path

    def truncated(self, fmt: str = "mp3", keep: int = 60) -> Path:
        """The first `keep` bytes of a real `fmt` file (an interrupted upload)."""
        path = self.directory / f"truncated-{keep}.{fmt}"
        with self._lock:
            if not path.exists():
                path.write_bytes(self.make(fmt).read_bytes()[:keep])
        return path

    def non_audio(self, name: str = "picture.mp3", *, kind: str = "png") -> Path:
        """A non-audio file under an audio-looking `name` (kind "png" or "text"), to prove checks read content."""
        path = self.directory / name
        path.write_bytes(PNG_1X1 if kind == "png" else b"this is plain text, not audio\n" * 20)
        return path

    def _encode(self, path: Path, fmt: str, seconds: float, sample_rate: int, frequency: float, channels: int) -> None:
        source = f"sine=frequency={frequency:g}:sample_rate={sample_rate}:duration={seconds:g}"
        command = [ffmpeg_exe(), "-nostdin", "-v", "error", "-y", "-f", "lavfi", "-i", source]
        command += ["-ac", str(channels), "-ar", str(sample_rate), "-c:a", CODECS[fmt], str(path)]
        result = subprocess.run(command, capture_output=True, timeout=self.timeout, check=False)
        if result.returncode != 0:
            path.unlink(missing_ok=True)
            raise RuntimeError(f"ffmpeg failed ({result.returncode}): {result.stderr.decode(errors='replace')[-500:]}")
        logger.debug("generated %s", path)


def decodes(path: Path, *, timeout: float = 30.0) -> bool:
    """Whether FFmpeg decodes `path` to the end without error (used to prove the samples are what they claim)."""
    command = [ffmpeg_exe(), "-nostdin", "-v", "error", "-xerror", "-i", str(path), "-f", "null", "-"]
    return subprocess.run(command, capture_output=True, timeout=timeout, check=False).returncode == 0
