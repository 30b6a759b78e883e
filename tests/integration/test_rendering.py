"""The FFmpeg adapter with the real imageio-ffmpeg binary on generated audio: presets, progress, timeout,
resource checks, FFmpeg errors (sanitised) and what the `rendering` breaker makes of each."""

from __future__ import annotations

import os
import re
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from flask import Flask

from backend.app.errors import RenderingError, RenderingResourceError, RenderingTimeoutError, ValidationError
from backend.app.renders.schemas import RenderRequest
from backend.app.resilience.recovery import CircuitOpenError, get_breaker
from backend.app.services.rendering import (
    FPS_CHOICES,
    PRESETS,
    RESOLUTIONS,
    Renderer,
    RenderSettings,
    RenderSpec,
    build_command,
    ffmpeg_binary,
    sanitise_output,
)
from tests.harness.peers.audio import AudioFactory, ffmpeg_exe
from tests.harness.renders import video_facts


@pytest.fixture
def render_app(make_app: Callable[..., Flask]) -> Iterator[Flask]:
    """An app context, so the renderer's guarded call uses this app's (fresh) breakers."""
    app = make_app(RETRY_SLEEP_ENABLED=False, CIRCUIT_BREAKERS={"rendering": {"min_calls": 2}})
    with app.app_context():
        yield app


def renderer(**overrides: object) -> Renderer:
    """A renderer with test-friendly defaults (no disk or memory margin beyond the estimate)."""
    settings = {"ffmpeg": ffmpeg_exe(), "min_free_disk_mb": 0, "min_free_memory_mb": 0, "timeout_seconds": 60.0}
    settings.update(overrides)
    return Renderer(RenderSettings(**settings))  # type: ignore[arg-type]


def ffmpeg_processes_under(folder: Path) -> list[int]:
    """PIDs of live processes whose command line mentions `folder`."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes()
            state = (entry / "stat").read_text().split(") ", 1)[1][0]
        except OSError:
            continue
        if str(folder).encode() in cmdline and state != "Z":
            pids.append(int(entry.name))
    return pids


@pytest.mark.parametrize("preset", PRESETS)
def test_each_preset_renders_an_h264_aac_mp4_of_the_chosen_size(
    render_app: Flask, audio_files: AudioFactory, tmp_path: Path, preset: str
) -> None:
    audio = audio_files.make("mp3", seconds=1.5)
    output = tmp_path / f"{preset}.mp4"
    result = renderer().render(
        audio, output, RenderSpec.parse(preset, "320x180", 24), duration_seconds=1.5, demuxer="mp3"
    )
    assert result.size == output.stat().st_size > 1000
    facts = video_facts(output)
    assert facts["video"] == "h264"
    assert facts["size"] == "320x180"
    assert facts["audio"] == "aac"
    assert facts["duration"].startswith("00:00:01.")
    assert not list(tmp_path.glob(".*stderr")), "the stderr capture is removed after a clean run"


def test_progress_is_reported_in_increasing_percents_ending_at_100(
    render_app: Flask, audio_files: AudioFactory, tmp_path: Path
) -> None:
    audio = audio_files.make("wav", seconds=12)
    seen: list[int] = []
    renderer().render(
        audio,
        tmp_path / "out.mp4",
        RenderSpec.parse("cqt", "640x360", 30),
        duration_seconds=12,
        demuxer="wav",
        progress=seen.append,
    )
    assert seen[-1] == 100
    assert seen == sorted(set(seen)), "strictly increasing"
    assert len(seen) >= 3, f"intermediate progress expected, got {seen}"
    assert all(0 < p < 100 for p in seen[:-1])


def test_a_render_past_its_timeout_raises_and_its_ffmpeg_process_is_gone(
    render_app: Flask, audio_files: AudioFactory, tmp_path: Path
) -> None:
    audio = audio_files.make("wav", seconds=60)
    work = tmp_path / "work"
    work.mkdir()
    started = time.monotonic()
    with pytest.raises(RenderingTimeoutError) as caught:
        renderer(timeout_seconds=0.4).render(
            audio, work / "out.mp4", RenderSpec.parse("cqt", "1280x720", 60), duration_seconds=60, demuxer="wav"
        )
    assert time.monotonic() - started < 5
    assert caught.value.code == "RENDERING_TIMEOUT"
    assert caught.value.recoverable is True
    assert caught.value.details["timeout_seconds"] == 0.4
    assert ffmpeg_processes_under(work) == []


def test_a_nonzero_exit_is_ffmpeg_error_with_exit_code_and_a_sanitised_stderr_tail(
    render_app: Flask, audio_files: AudioFactory, tmp_path: Path
) -> None:
    corrupt = audio_files.corrupt("flac")
    work = tmp_path / "secret-work-dir"
    work.mkdir()
    audio = work / "input.flac"
    audio.write_bytes(corrupt.read_bytes())
    with pytest.raises(RenderingError) as caught:
        renderer().render(
            audio, work / "out.mp4", RenderSpec.parse("waveform", "320x180", 24), duration_seconds=1, demuxer="flac"
        )
    error = caught.value
    assert error.code == "FFMPEG_ERROR"
    assert error.status_code == 500
    assert error.recoverable is False
    assert error.details["exit_code"] > 0
    tail = error.details["stderr_tail"]
    assert "Invalid data" in tail
    assert "<input>" in tail
    assert str(tmp_path) not in tail and "secret-work-dir" not in tail
    assert not re.search(r"(?<![\w.<>-])/[\w.-]", tail), f"an absolute path leaked: {tail}"


def test_sanitise_output_replaces_paths_addresses_and_secrets() -> None:
    text = (
        "[mp3 @ 0x55d0c0ffee00] header missing in /srv/oriel/work/abc/input.mp3\n"
        "Could not open /etc/fonts/fonts.conf\n"
        "Authorization: Bearer sk_live_abcdefghijklmnop0123456789\n"
    )
    cleaned = sanitise_output(text, {"/srv/oriel/work/abc/input.mp3": "<input>"})
    assert "0x55d0c0ffee00" not in cleaned
    assert "<input>" in cleaned
    assert "/etc/fonts" not in cleaned and "<path>" in cleaned
    assert "sk_live_abcdefghijklmnop0123456789" not in cleaned


def test_sanitise_output_keeps_only_the_last_lines() -> None:
    text = "\n".join(f"line {i}" for i in range(100))
    assert sanitise_output(text, lines=3).splitlines() == ["line 97", "line 98", "line 99"]


def test_too_little_disk_refuses_the_render_before_ffmpeg_starts(
    render_app: Flask, audio_files: AudioFactory, tmp_path: Path
) -> None:
    with pytest.raises(RenderingResourceError) as caught:
        renderer(min_free_disk_mb=10**9, retry_after_seconds=17).render(
            audio_files.make("wav"),
            tmp_path / "out.mp4",
            RenderSpec.parse("waveform", "320x180", 24),
            duration_seconds=1,
        )
    assert caught.value.status_code == 503
    assert caught.value.details == {"resource": "disk"}
    assert caught.value.retry_after == 17
    assert not (tmp_path / "out.mp4").exists()


def test_too_little_available_memory_refuses_the_render(
    render_app: Flask, audio_files: AudioFactory, tmp_path: Path
) -> None:
    meminfo = tmp_path / "meminfo"
    meminfo.write_text("MemTotal:       1024000 kB\nMemFree:          1000 kB\nMemAvailable:     2000 kB\n")
    tiny = Renderer(RenderSettings(ffmpeg=ffmpeg_exe(), min_free_disk_mb=0), meminfo=str(meminfo))
    with pytest.raises(RenderingResourceError) as caught:
        tiny.render(
            audio_files.make("wav"),
            tmp_path / "out.mp4",
            RenderSpec.parse("waveform", "320x180", 24),
            duration_seconds=1,
        )
    assert caught.value.details == {"resource": "memory"}


def test_a_concurrency_cap_of_zero_refuses_every_render_with_retry_after(
    render_app: Flask, audio_files: AudioFactory, tmp_path: Path
) -> None:
    capped = renderer(max_concurrent=0, retry_after_seconds=9)
    spec = RenderSpec.parse("waveform", "320x180", 24)
    for call in (
        lambda: capped.admit(spec, 1.0, input_bytes=10),
        lambda: capped.render(audio_files.make("wav"), tmp_path / "out.mp4", spec, duration_seconds=1),
    ):
        with pytest.raises(RenderingResourceError) as caught:
            call()
        assert caught.value.details == {"resource": "concurrency"}
        assert caught.value.retry_after == 9


def test_the_slot_is_taken_while_a_render_runs_and_given_back_after(
    render_app: Flask, audio_files: AudioFactory, tmp_path: Path
) -> None:
    one_slot = renderer(max_concurrent=1)
    spec = RenderSpec.parse("waveform", "320x180", 24)
    running, release = threading.Event(), threading.Event()

    def hold(_percent: int) -> None:
        running.set()
        release.wait(10)

    errors: list[BaseException] = []

    def first() -> None:
        with render_app.app_context():
            try:
                one_slot.render(
                    audio_files.make("wav", seconds=8), tmp_path / "a.mp4", spec, duration_seconds=8, progress=hold
                )
            except BaseException as exc:
                errors.append(exc)

    thread = threading.Thread(target=first)
    thread.start()
    assert running.wait(10)
    with pytest.raises(RenderingResourceError) as caught:
        one_slot.render(audio_files.make("wav"), tmp_path / "b.mp4", spec, duration_seconds=1)
    assert caught.value.details == {"resource": "concurrency"}
    release.set()
    thread.join(20)
    assert errors == []
    one_slot.render(audio_files.make("wav"), tmp_path / "c.mp4", spec, duration_seconds=1)  # the slot is back


def test_bad_input_does_not_trip_the_rendering_breaker(
    render_app: Flask, audio_files: AudioFactory, tmp_path: Path
) -> None:
    spec = RenderSpec.parse("waveform", "320x180", 24)
    corrupt = audio_files.corrupt("mp3")
    for i in range(4):
        with pytest.raises(RenderingError, match="FFmpeg failed"):
            renderer().render(corrupt, tmp_path / f"bad{i}.mp4", spec, duration_seconds=1, demuxer="mp3")
    assert get_breaker("rendering").state.value == "closed"


def test_timeouts_trip_the_rendering_breaker_and_an_open_breaker_fails_fast(
    render_app: Flask, audio_files: AudioFactory, tmp_path: Path
) -> None:
    spec = RenderSpec.parse("waveform", "320x180", 24)
    slow = renderer(timeout_seconds=0.2)
    long_audio = audio_files.make("wav", seconds=60)
    for i in range(2):
        with pytest.raises(RenderingTimeoutError):
            slow.render(
                long_audio, tmp_path / f"slow{i}.mp4", RenderSpec.parse("cqt", "1280x720", 60), duration_seconds=60
            )
    assert get_breaker("rendering").state.value == "open"
    with pytest.raises(CircuitOpenError) as caught:
        renderer().render(audio_files.make("wav"), tmp_path / "after.mp4", spec, duration_seconds=1)
    assert caught.value.status_code == 503
    assert caught.value.retry_after is not None


def test_spec_choices_are_validated_and_match_the_request_schema() -> None:
    with pytest.raises(ValidationError) as caught:
        RenderSpec.parse("plasma", "640x360", 30)
    assert "preset" in caught.value.details["fields"]
    with pytest.raises(ValidationError):
        RenderSpec.parse("waveform", "641x360", 30)
    with pytest.raises(ValidationError):
        RenderSpec.parse("waveform", "640x360", 25)
    fields = RenderRequest.model_json_schema()["properties"]
    assert tuple(fields["preset"]["enum"]) == PRESETS
    assert tuple(fields["resolution"]["enum"]) == RESOLUTIONS
    assert tuple(fields["fps"]["enum"]) == FPS_CHOICES


def test_the_command_forces_the_recognised_demuxer_and_reports_progress_on_stdout(tmp_path: Path) -> None:
    command = build_command(
        "ffmpeg", tmp_path / "in.m4a", tmp_path / "out.mp4", RenderSpec.parse("cqt", "640x360", 30), demuxer="mov"
    )
    assert command[command.index("-f") + 1] == "mov"
    assert command[command.index("-progress") + 1] == "pipe:1"
    assert "showcqt=s=640x360:r=30" in command[command.index("-filter_complex") + 1]


def test_ffmpeg_binary_is_imageio_by_default_or_the_configured_one(tmp_path: Path) -> None:
    assert ffmpeg_binary({}) == ffmpeg_exe()
    assert ffmpeg_binary({"FFMPEG_BINARY": ffmpeg_exe()}) == ffmpeg_exe()
    with pytest.raises(RenderingError):
        ffmpeg_binary({"FFMPEG_BINARY": str(tmp_path / "no-such-ffmpeg")})
    assert os.access(ffmpeg_exe(), os.X_OK)
