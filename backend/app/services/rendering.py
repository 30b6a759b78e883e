"""FFmpeg adapter: audio in, visualizer video out, with presets, a timeout, resource checks and progress.

    renderer = get_renderer()            # built lazily from app.config, one per app
    spec = RenderSpec.parse("waveform", "1280x720", 30)
    renderer.render(audio_path, output_path, spec, duration_seconds=12.5, progress=print)

The binary is imageio-ffmpeg's static build (libx264, aac and the visualizer filters; it ships no
ffprobe, see `services.audio`) unless `FFMPEG_BINARY` names another one.

Failures are our errors, raised once here:
- `RenderingResourceError` (503, recoverable) before FFmpeg starts: no render slot free
  (`RENDER_MAX_CONCURRENT`, a per-process non-blocking semaphore), too little free disk in the work
  directory for the estimated output, too little available memory (`/proc/meminfo`);
- `RenderingTimeoutError` when FFmpeg runs past `RENDER_TIMEOUT_SECONDS`: its whole process group
  is killed before the error is raised;
- `RenderingError` `FFMPEG_ERROR` on a non-zero exit, with the exit code and the last lines of
  stderr in `details`, sanitised: work-directory paths become placeholders, any other absolute
  path `<path>`, secrets are redacted.

The FFmpeg call goes through `with_error_recovery("rendering", "render", max_retries=0)`, so the
`rendering` breaker sees every run; the classifier keeps bad input (a plain non-zero exit, which
is permanent) from tripping it, while timeouts and FFmpeg killed by a signal (OOM) count.

Settings (app.config, all optional): FFMPEG_BINARY, RENDER_TIMEOUT_SECONDS (600), RENDER_WORK_DIR
(system temp), RENDER_MAX_CONCURRENT (2), RENDER_MIN_FREE_DISK_MB (512), RENDER_MIN_FREE_MEMORY_MB
(256), RENDER_RETRY_AFTER_SECONDS (30).
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import selectors
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from flask import current_app

from ...log.redaction import redact
from ..errors import RenderingError, RenderingResourceError, RenderingTimeoutError, ValidationError
from ..resilience.recovery import with_error_recovery

logger = logging.getLogger(__name__)

ProgressCallback = Callable[[int], None]

EXTENSION = "renderer"
RESOLUTIONS: tuple[str, ...] = ("320x180", "640x360", "1280x720", "1920x1080")
FPS_CHOICES: tuple[int, ...] = (24, 30, 60)
AUDIO_BITRATE_KBPS = 192
STDERR_TAIL_LINES = 20
STDERR_TAIL_BYTES = 8192

# Each preset is a filter chain from the audio input to raw video of the chosen size and rate.
PRESET_FILTERS: Mapping[str, str] = {
    "waveform": "showwaves=s={w}x{h}:mode=cline:rate={fps}:colors=0x2ec5ff",
    "spectrum": "showspectrum=s={w}x{h}:mode=combined:slide=scroll:color=intensity:scale=cbrt,fps={fps}",
    "cqt": "showcqt=s={w}x{h}:r={fps}:bar_g=2:sono_g=4",
    # avectorscope plots left against right: mono input is duplicated to two channels first.
    "vectorscope": "aformat=channel_layouts=stereo,avectorscope=s={w}x{h}:r={fps}:zoom=1.5:draw=line",
}
PRESET_DESCRIPTIONS: Mapping[str, str] = {
    "waveform": "Oscilloscope-style waveform (showwaves)",
    "spectrum": "Scrolling frequency spectrum (showspectrum)",
    "cqt": "Constant-Q transform bars and sonogram (showcqt)",
    "vectorscope": "Stereo vectorscope (avectorscope)",
}
PRESETS: tuple[str, ...] = tuple(PRESET_FILTERS)


@dataclass(frozen=True)
class RenderSpec:
    """What to render: a preset at a resolution and frame rate."""

    preset: str
    width: int
    height: int
    fps: int

    @classmethod
    def parse(cls, preset: str, resolution: str, fps: int) -> RenderSpec:
        """Validate the choices (422 `VALIDATION_ERROR` naming the bad field)."""
        if preset not in PRESET_FILTERS:
            raise ValidationError(f"Unknown preset; choose one of {', '.join(PRESETS)}.", field="preset")
        if resolution not in RESOLUTIONS:
            raise ValidationError(
                f"Unsupported resolution; choose one of {', '.join(RESOLUTIONS)}.", field="resolution"
            )
        if fps not in FPS_CHOICES:
            raise ValidationError(f"Unsupported fps; choose one of {FPS_CHOICES}.", field="fps")
        width, height = (int(part) for part in resolution.split("x"))
        return cls(preset, width, height, fps)

    @property
    def resolution(self) -> str:
        """`WIDTHxHEIGHT`."""
        return f"{self.width}x{self.height}"

    def filter_graph(self) -> str:
        """The `-filter_complex` graph: audio input 0 to the video label `[v]`."""
        chain = PRESET_FILTERS[self.preset].format(w=self.width, h=self.height, fps=self.fps)
        return f"[0:a]{chain},format=yuv420p[v]"

    def estimated_bytes(self, duration_seconds: float) -> int:
        """A generous estimate of the output size (x264 at CRF 23 stays well under 0.1 bit per pixel)."""
        video_bps = self.width * self.height * self.fps * 0.1
        return int(max(duration_seconds, 1.0) * (video_bps + AUDIO_BITRATE_KBPS * 1000) / 8)

    def estimated_memory_bytes(self) -> int:
        """Frames x264 may hold (lookahead, references) plus a fixed base for FFmpeg itself."""
        return int(self.width * self.height * 1.5 * 64) + 64 * 1024 * 1024


@dataclass(frozen=True)
class RenderSettings:
    """How this process renders (from app.config, see the module docstring)."""

    ffmpeg: str
    timeout_seconds: float = 600.0
    work_dir: str | None = None
    max_concurrent: int = 2
    min_free_disk_mb: int = 512
    min_free_memory_mb: int = 256
    retry_after_seconds: int = 30

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> RenderSettings:
        """Read the RENDER_* and FFMPEG_BINARY settings."""
        return cls(
            ffmpeg=ffmpeg_binary(config),
            timeout_seconds=float(config.get("RENDER_TIMEOUT_SECONDS", 600)),
            work_dir=config.get("RENDER_WORK_DIR") or None,
            max_concurrent=int(config.get("RENDER_MAX_CONCURRENT", 2)),
            min_free_disk_mb=int(config.get("RENDER_MIN_FREE_DISK_MB", 512)),
            min_free_memory_mb=int(config.get("RENDER_MIN_FREE_MEMORY_MB", 256)),
            retry_after_seconds=int(config.get("RENDER_RETRY_AFTER_SECONDS", 30)),
        )


@dataclass(frozen=True)
class RenderResult:
    """A finished render."""

    output_path: Path
    size: int
    seconds: float


def ffmpeg_binary(config: Mapping[str, Any]) -> str:
    """The configured FFmpeg (`FFMPEG_BINARY`, a path or a name on PATH), else imageio-ffmpeg's."""
    configured = config.get("FFMPEG_BINARY")
    if configured:
        found = shutil.which(configured)
        if found is None:
            raise RenderingError("The configured FFmpeg binary was not found.", details={"setting": "FFMPEG_BINARY"})
        return found
    import imageio_ffmpeg  # imported lazily: it looks for the binary on disk

    return imageio_ffmpeg.get_ffmpeg_exe()


_HEX_ADDRESS = re.compile(r" @ 0x[0-9a-fA-F]+")
_ABSOLUTE_PATH = re.compile(r"(?<![\w.~<>-])/(?:[\w.@+-]+/)*[\w.@+-]*")


def sanitise_output(text: str, placeholders: Mapping[str, str] | None = None, *, lines: int = STDERR_TAIL_LINES) -> str:
    """The last `lines` lines of FFmpeg output, safe to show: no paths, no memory addresses, no secrets."""
    for path, label in sorted((placeholders or {}).items(), key=lambda item: -len(item[0])):
        if path:
            text = text.replace(path, label)
    text = _HEX_ADDRESS.sub("", text)
    text = _ABSOLUTE_PATH.sub("<path>", text)
    kept = [line.rstrip() for line in text.splitlines() if line.strip()]
    return redact("\n".join(kept[-lines:]))


def available_memory_bytes(meminfo: str = "/proc/meminfo") -> int | None:
    """`MemAvailable` from /proc/meminfo, or None where there is no such file (not Linux)."""
    try:
        with open(meminfo, encoding="ascii") as handle:
            for line in handle:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        logger.debug("No usable %s; memory check skipped", meminfo)
    return None


class _ProgressTracker:
    """Turns FFmpeg's `-progress` key=value lines into whole percents, reported when they grow."""

    def __init__(self, duration_seconds: float, callback: ProgressCallback | None) -> None:
        self.total_us = max(duration_seconds, 0.001) * 1_000_000
        self.callback = callback
        self.percent = 0

    def feed(self, line: bytes) -> None:
        key, _, value = line.decode("ascii", "replace").strip().partition("=")
        if key != "out_time_us" or not value.lstrip("-").isdigit():
            return  # "N/A" before the first frame; other keys are not needed
        # 99 at most until FFmpeg exits cleanly: the trailer (faststart) is still to be written.
        self.report(min(99, int(int(value) * 100 / self.total_us)))

    def report(self, percent: int) -> None:
        if percent > self.percent:
            self.percent = percent
            if self.callback is not None:
                self.callback(percent)


class Renderer:
    """Runs FFmpeg for renders; holds this process's render slots."""

    def __init__(self, settings: RenderSettings, *, meminfo: str = "/proc/meminfo") -> None:
        self.settings = settings
        self.meminfo = meminfo
        # Non-blocking: a request finding every slot busy is told to come back, never queued here.
        self._slots = threading.Semaphore(max(settings.max_concurrent, 0))

    def work_dir(self) -> Path:
        """Where renders get their temporary folders."""
        path = Path(self.settings.work_dir or tempfile.gettempdir())
        path.mkdir(parents=True, exist_ok=True)
        return path

    def render(
        self,
        audio_path: Path,
        output_path: Path,
        spec: RenderSpec,
        *,
        duration_seconds: float,
        demuxer: str | None = None,
        progress: ProgressCallback | None = None,
    ) -> RenderResult:
        """Render `audio_path` to `output_path` (MP4, H.264 + AAC); see the module docstring for errors."""
        if not self._slots.acquire(blocking=False):
            raise self._resource_error("concurrency", "Every render slot is busy; retry shortly.")
        try:
            self.check_resources(output_path.parent, spec, duration_seconds, input_bytes=audio_path.stat().st_size)
            command = build_command(self.settings.ffmpeg, audio_path, output_path, spec, demuxer=demuxer)
            started = time.monotonic()
            _run_ffmpeg(
                command,
                timeout=self.settings.timeout_seconds,
                tracker=_ProgressTracker(duration_seconds, progress),
                stderr_path=output_path.parent / f".{output_path.name}.stderr",
                placeholders={
                    str(audio_path): "<input>",
                    str(output_path): "<output>",
                    str(output_path.parent): "<workdir>",
                },
            )
            seconds = time.monotonic() - started
        finally:
            self._slots.release()
        size = output_path.stat().st_size
        logger.info("Rendered %s %s@%s in %.2fs (%d bytes)", spec.preset, spec.resolution, spec.fps, seconds, size)
        return RenderResult(output_path, size, seconds)

    def admit(self, spec: RenderSpec, duration_seconds: float, *, input_bytes: int) -> None:
        """Would a render start now? The checks `render` makes, without taking a slot (for 503 before queueing)."""
        if self.settings.max_concurrent <= 0:
            raise self._resource_error("concurrency", "Rendering is paused on this server; retry later.")
        self.check_resources(self.work_dir(), spec, duration_seconds, input_bytes=input_bytes)

    def check_resources(self, work_dir: Path, spec: RenderSpec, duration_seconds: float, *, input_bytes: int) -> None:
        """Refuse to start without room for the output and FFmpeg's memory (503, recoverable)."""
        mb = 1024 * 1024
        needed_disk = spec.estimated_bytes(duration_seconds) + input_bytes + self.settings.min_free_disk_mb * mb
        free_disk = shutil.disk_usage(work_dir).free
        if free_disk < needed_disk:
            logger.warning("Render refused: %d MB free on disk, %d MB needed", free_disk // mb, needed_disk // mb)
            raise self._resource_error("disk", "Not enough free disk space to render now; retry later.")
        available = available_memory_bytes(self.meminfo)
        needed_memory = spec.estimated_memory_bytes() + self.settings.min_free_memory_mb * mb
        if available is not None and available < needed_memory:
            logger.warning("Render refused: %d MB memory available, %d MB needed", available // mb, needed_memory // mb)
            raise self._resource_error("memory", "Not enough memory to render now; retry later.")

    def _resource_error(self, resource: str, message: str) -> RenderingResourceError:
        # Numbers (free bytes, limits) stay in the log: they describe the server, not the request.
        return RenderingResourceError(
            message, details={"resource": resource}, retry_after=self.settings.retry_after_seconds
        )


def build_command(
    ffmpeg: str, audio_path: Path, output_path: Path, spec: RenderSpec, *, demuxer: str | None = None
) -> list[str]:
    """The FFmpeg command line for one render."""
    command = [ffmpeg, "-nostdin", "-hide_banner", "-nostats", "-loglevel", "error", "-y"]
    if demuxer:
        command += ["-f", demuxer]  # the format the content was recognised as, never a guess from the name
    # Local files only: a crafted input cannot make FFmpeg fetch URLs or open other protocols.
    command += ["-protocol_whitelist", "file", "-i", str(audio_path)]
    command += ["-filter_complex", spec.filter_graph(), "-map", "[v]", "-map", "0:a:0"]
    command += ["-c:v", "libx264", "-preset", "veryfast", "-crf", "23", "-pix_fmt", "yuv420p"]
    command += ["-c:a", "aac", "-b:a", f"{AUDIO_BITRATE_KBPS}k", "-shortest", "-movflags", "+faststart"]
    # Progress every 0.25 s (FFmpeg's default is 0.5 s): short renders still show movement.
    command += ["-progress", "pipe:1", "-stats_period", "0.25", str(output_path)]
    return command


@with_error_recovery("rendering", "render", max_retries=0)
def _run_ffmpeg(
    command: list[str],
    *,
    timeout: float,
    tracker: _ProgressTracker,
    stderr_path: Path,
    placeholders: Mapping[str, str],
) -> None:
    """Run FFmpeg to completion within `timeout`, feeding its progress to `tracker`."""
    with open(stderr_path, "w+b") as stderr:
        try:
            # A new session makes FFmpeg a process-group leader, so a timeout kills it and anything it spawned.
            proc = subprocess.Popen(
                command, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=stderr, start_new_session=True
            )
        except OSError as exc:
            raise RenderingError(
                "FFmpeg could not be started.", details={"reason": type(exc).__name__}, recoverable=False
            ) from exc
        try:
            finished = _pump_progress(proc, time.monotonic() + timeout, tracker)
        finally:
            if proc.poll() is None:
                _kill_group(proc)
        if not finished:
            logger.warning("FFmpeg (pid %s) killed after the %ss render timeout", proc.pid, timeout)
            raise RenderingTimeoutError(
                f"The render took longer than {timeout:g} seconds and was stopped.",
                details={"timeout_seconds": timeout, "progress": tracker.percent},
            )
        if proc.returncode != 0:
            stderr.seek(max(0, stderr_path.stat().st_size - STDERR_TAIL_BYTES))
            tail = sanitise_output(stderr.read().decode("utf-8", "replace"), placeholders)
            logger.warning("FFmpeg exited with %s: %s", proc.returncode, tail.splitlines()[-1:] or "")
            raise RenderingError(
                "FFmpeg failed to render the video.",
                code="FFMPEG_ERROR",
                details={"exit_code": proc.returncode, "stderr_tail": tail},
                # Killed by a signal (OOM killer, operator): the machine, not the input; may work later.
                recoverable=proc.returncode < 0,
            )
    stderr_path.unlink(missing_ok=True)
    tracker.report(100)


def _pump_progress(proc: subprocess.Popen[bytes], deadline: float, tracker: _ProgressTracker) -> bool:
    """Read `-progress` lines until FFmpeg exits (True) or the deadline passes (False)."""
    assert proc.stdout is not None
    fd = proc.stdout.fileno()
    pending = b""
    with selectors.DefaultSelector() as selector:
        selector.register(fd, selectors.EVENT_READ)
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            if not selector.select(timeout=min(remaining, 1.0)):
                continue
            chunk = os.read(fd, 65536)
            if not chunk:
                break  # FFmpeg closed its stdout: it is exiting
            *lines, pending = (pending + chunk).split(b"\n")
            for line in lines:
                tracker.feed(line)
    try:
        proc.wait(timeout=max(deadline - time.monotonic(), 0.01))
    except subprocess.TimeoutExpired:
        return False
    finally:
        proc.stdout.close()
    return True


def _kill_group(proc: subprocess.Popen[bytes]) -> None:
    with contextlib.suppress(ProcessLookupError):  # it may exit between poll() and here
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    if proc.stdout is not None and not proc.stdout.closed:
        proc.stdout.close()


_build_lock = threading.Lock()


def get_renderer() -> Renderer:
    """The current app's renderer, built from its config on first use."""
    app = current_app._get_current_object()  # type: ignore[attr-defined]
    renderer = app.extensions.get(EXTENSION)
    if renderer is None:
        with _build_lock:
            renderer = app.extensions.get(EXTENSION)
            if renderer is None:
                renderer = app.extensions[EXTENSION] = Renderer(RenderSettings.from_config(app.config))
    return renderer
