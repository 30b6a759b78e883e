"""Rendering costs, measured as ratios within one run (`.venv/bin/python bench/bench_rendering.py`).

0. The adapter's fixed cost per render, with a stand-in FFmpeg that only writes the output file.
1. Adapter overhead: `Renderer.render` (resource checks, render slot, `-progress` parsing, the
   `rendering` breaker, performance.log line) vs the same FFmpeg command run bare with
   `subprocess.run`, per preset, on a 3 s clip at 640x360@30. Target: the adapter's own cost (0.)
   stays under 1% of such a render; the per-preset ratios show it is lost in FFmpeg's run-to-run noise.
2. Speed per resolution (waveform, 30 fps): seconds of wall time per second of audio.
3. The upload content check (`inspect_audio`: magic bytes + full decode) for 3 s and 60 s MP3s.

Runs are interleaved (bare, adapter, bare, adapter...) so machine load hits both sides alike; the
median of `--repeat` runs is reported. Nothing here listens on a network port.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from backend.app import create_app
from backend.app.services.audio import inspect_audio
from backend.app.services.rendering import PRESETS, Renderer, RenderSettings, RenderSpec, build_command
from config import TestingConfig
from tests.harness.peers.audio import AudioFactory, ffmpeg_exe


def median_seconds(fn: object, repeat: int) -> float:
    """Median wall time of `repeat` calls."""
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        fn()  # type: ignore[operator]
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-rendering-"))
    audio = AudioFactory(work / "audio")
    clip = audio.make("wav", seconds=3, sample_rate=44100)
    app = create_app(
        TestingConfig,
        SECRET_KEY="bench-secret-key-0123456789",
        JWT_SECRET_KEY="bench-jwt-secret-key-0123456789",
        LOG_DIR=str(work / "logs"),
        SQLALCHEMY_DATABASE_URI=f"sqlite:///{work / 'bench.db'}",
    )
    renderer = Renderer(RenderSettings(ffmpeg=ffmpeg_exe(), min_free_disk_mb=0, min_free_memory_mb=0))

    print("0. Fixed cost per render: a stand-in FFmpeg that only writes the output file (median of 50)")
    stand_in = work / "noop-ffmpeg"
    stand_in.write_text('#!/bin/sh\nfor last; do :; done\n: > "$last"\n')
    stand_in.chmod(0o755)
    noop = Renderer(RenderSettings(ffmpeg=str(stand_in), min_free_disk_mb=0, min_free_memory_mb=0))
    spec = RenderSpec.parse("waveform", "640x360", 30)
    command = build_command(str(stand_in), clip, work / "noop.mp4", spec)
    with app.app_context():
        bare_noop = median_seconds(lambda: subprocess.run(command, capture_output=True, check=True), 50)
        adapter_noop = median_seconds(lambda: noop.render(clip, work / "noop.mp4", spec, duration_seconds=3.0), 50)
    print(f"   bare subprocess.run {bare_noop * 1000:.1f} ms, Renderer {adapter_noop * 1000:.1f} ms")
    print(f"   adapter's own cost: {(adapter_noop - bare_noop) * 1000:.1f} ms per render")

    print("1. Adapter overhead, 3 s clip at 640x360@30 (median of interleaved runs)")
    print(f"   {'preset':<12} {'bare ffmpeg':>12} {'Renderer':>10} {'ratio':>6}")
    with app.app_context():
        for preset in PRESETS:
            spec = RenderSpec.parse(preset, "640x360", 30)
            command = build_command(ffmpeg_exe(), clip, work / "bare.mp4", spec, demuxer="wav")
            bare, adapter = [], []
            for _ in range(args.repeat):
                started = time.perf_counter()
                subprocess.run(command, capture_output=True, check=True)
                bare.append(time.perf_counter() - started)
                started = time.perf_counter()
                renderer.render(clip, work / "adapter.mp4", spec, duration_seconds=3.0, demuxer="wav")
                adapter.append(time.perf_counter() - started)
            b, a = statistics.median(bare), statistics.median(adapter)
            print(f"   {preset:<12} {b * 1000:>9.0f} ms {a * 1000:>7.0f} ms {a / b:>6.2f}")

        print("2. Waveform at 30 fps: wall seconds per second of audio (10 s clip)")
        ten = audio.make("wav", seconds=10, sample_rate=44100)
        for resolution in ("640x360", "1280x720", "1920x1080"):
            spec = RenderSpec.parse("waveform", resolution, 30)
            seconds = median_seconds(
                lambda spec=spec: renderer.render(ten, work / "res.mp4", spec, duration_seconds=10.0, demuxer="wav"),
                max(1, args.repeat // 2),
            )
            print(f"   {resolution:<10} {seconds / 10:.3f} s per audio second ({10 / seconds:.1f}x realtime)")

    print("3. Upload content check (magic bytes + full decode)")
    for seconds in (3, 60):
        data = audio.make("mp3", seconds=seconds, sample_rate=44100).read_bytes()
        took = median_seconds(lambda data=data: inspect_audio(data, ffmpeg=ffmpeg_exe()), args.repeat)
        print(f"   {seconds:>3} s MP3 ({len(data) // 1024} KiB): {took * 1000:.0f} ms")


if __name__ == "__main__":
    main()
