"""Audio recognised by its content, never by its name: magic bytes first, then a full decode with FFmpeg.

    info = inspect_audio(data, ffmpeg=ffmpeg_binary(app.config))   # AudioInfo(format, duration_seconds)

`sniff(data)` reads the container's signature (WAV/RF64, MP3 with or without an ID3 tag, Ogg, FLAC,
MP4/M4A, AAC ADTS/ADIF). A recognised file is then decoded to the null muxer with the demuxer the
content named (imageio-ffmpeg ships no ffprobe), which proves it decodes to the end and gives its
duration from FFmpeg's `-progress` output (falling back to the `Duration:` header line).

Errors: `FileValidationError` `UNSUPPORTED_AUDIO_FORMAT` when no audio signature matches (a PNG or
a text file named `.mp3`), `FILE_INVALID` when it looks like audio but does not decode (corrupt,
truncated, no audio stream, no samples). An MP3 named `.wav` is simply an MP3.
"""

from __future__ import annotations

import logging
import re
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from ..errors import FileValidationError
from .rendering import sanitise_output

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class AudioFormat:
    """A container we accept: its name, FFmpeg demuxer, file extension and MIME type."""

    name: str
    demuxer: str
    extension: str
    content_type: str


FORMATS: dict[str, AudioFormat] = {
    "wav": AudioFormat("wav", "wav", "wav", "audio/wav"),
    "mp3": AudioFormat("mp3", "mp3", "mp3", "audio/mpeg"),
    "ogg": AudioFormat("ogg", "ogg", "ogg", "audio/ogg"),
    "flac": AudioFormat("flac", "flac", "flac", "audio/flac"),
    "m4a": AudioFormat("m4a", "mov", "m4a", "audio/mp4"),
    "aac": AudioFormat("aac", "aac", "aac", "audio/aac"),
}
SUPPORTED = ("WAV", "MP3", "OGG", "FLAC", "M4A", "AAC")


@dataclass(frozen=True)
class AudioInfo:
    """What the content check found."""

    format: AudioFormat
    duration_seconds: float


def _id3_length(data: bytes) -> int:
    """Bytes taken by a leading ID3v2 tag (header, syncsafe size, optional footer)."""
    size = 0
    for byte in data[6:10]:
        size = (size << 7) | (byte & 0x7F)
    footer = 10 if data[5] & 0x10 else 0
    return 10 + size + footer


def _frame_sync(data: bytes) -> AudioFormat | None:
    """An MPEG audio frame header: MP3 (layers I-III) or AAC ADTS (layer bits 00)."""
    if len(data) < 4 or data[0] != 0xFF or data[1] & 0xE0 != 0xE0:
        return None
    layer = (data[1] >> 1) & 0x03
    if layer == 0:
        return FORMATS["aac"] if data[1] & 0xF6 == 0xF0 else None
    bitrate_index, rate_index = data[2] >> 4, (data[2] >> 2) & 0x03
    if bitrate_index == 0x0F or rate_index == 0x03:
        return None  # reserved values: not a frame header
    return FORMATS["mp3"]


def sniff(data: bytes) -> AudioFormat | None:
    """The audio container `data` starts with, or None when it is not one we accept."""
    if len(data) < 12:
        return None
    head = data[:12]
    if head[:4] in (b"RIFF", b"RF64", b"BW64") and head[8:12] == b"WAVE":
        return FORMATS["wav"]
    if head[:4] == b"OggS":
        return FORMATS["ogg"]
    if head[:4] == b"fLaC":
        return FORMATS["flac"]
    if head[4:8] == b"ftyp":
        return FORMATS["m4a"]  # an ISO media file; the decode step proves it carries audio
    if head[:4] == b"ADIF":
        return FORMATS["aac"]
    if head[:3] == b"ID3":
        # A tag can front MP3, AAC or even FLAC; what follows it decides, MP3 when it says nothing.
        rest = data[_id3_length(data) :]
        inner = sniff(rest) if len(rest) >= 12 else None
        return inner or _frame_sync(rest) or FORMATS["mp3"]
    return _frame_sync(data)


_DURATION = re.compile(rb"Duration: (\d+):(\d{2}):(\d{2}(?:\.\d+)?)")


def _duration_from(stdout: bytes, stderr: bytes) -> float:
    decoded = [int(v) for v in re.findall(rb"^out_time_us=(\d+)", stdout, re.MULTILINE)]
    if decoded and decoded[-1] > 0:
        return decoded[-1] / 1_000_000
    match = _DURATION.search(stderr)
    if match:
        hours, minutes, seconds = match.groups()
        return int(hours) * 3600 + int(minutes) * 60 + float(seconds)
    return 0.0


def probe(path: Path, fmt: AudioFormat, *, ffmpeg: str, timeout: float = 60.0) -> AudioInfo:
    """Decode `path` fully as `fmt` (FFmpeg null muxer): its duration, or `FILE_INVALID`."""
    command = [ffmpeg, "-nostdin", "-hide_banner", "-nostats", "-xerror", "-f", fmt.demuxer]
    command += ["-protocol_whitelist", "file", "-i", str(path)]  # local files only, whatever the content says
    command += ["-map", "0:a:0", "-vn", "-f", "null", "-progress", "pipe:1", "-"]
    try:
        result = subprocess.run(command, capture_output=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired as exc:
        raise FileValidationError(
            f"The audio could not be decoded within {timeout:g} seconds.",
            details={"format": fmt.name, "reason": "decode timed out"},
        ) from exc
    if result.returncode != 0:
        reason = sanitise_output(result.stderr.decode("utf-8", "replace"), {str(path): "<upload>"}, lines=3)
        logger.info("Upload rejected: %s does not decode (exit %s)", fmt.name, result.returncode)
        raise FileValidationError(
            f"The file looks like {fmt.name.upper()} but could not be decoded; it may be corrupt or truncated.",
            details={"format": fmt.name, "reason": reason or f"ffmpeg exit code {result.returncode}"},
        )
    duration = _duration_from(result.stdout, result.stderr)
    if duration <= 0:
        raise FileValidationError(
            "The file contains no audio samples.", details={"format": fmt.name, "reason": "no samples decoded"}
        )
    return AudioInfo(fmt, round(duration, 3))


def inspect_audio(data: bytes, *, ffmpeg: str, timeout: float = 60.0, work_dir: str | None = None) -> AudioInfo:
    """Recognise and decode uploaded bytes (see the module docstring for the errors)."""
    if not data:
        raise FileValidationError("The file is empty.", details={"reason": "empty file"})
    fmt = sniff(data)
    if fmt is None:
        raise FileValidationError(
            f"The file is not a supported audio format ({', '.join(SUPPORTED)}).",
            code="UNSUPPORTED_AUDIO_FORMAT",
            details={"supported": list(SUPPORTED)},
        )
    with tempfile.TemporaryDirectory(prefix="oriel-probe-", dir=work_dir) as folder:
        path = Path(folder) / f"upload.{fmt.extension}"
        path.write_bytes(data)
        return probe(path, fmt, ffmpeg=ffmpeg, timeout=timeout)
