"""Group errors like an error tracker: a fingerprint that ignores what varies between occurrences.

Two occurrences of the same bug (same exception type, code, endpoint and in-app call path, same
message once numbers, hex ids, UUIDs and emails are masked) share a fingerprint; the same message
raised from a different in-app function does not. Line numbers are left out on purpose so that an
unrelated edit above a function does not split its group.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Sequence
from pathlib import Path
from types import CodeType, TracebackType

#: The in-app code: frames under this folder are ours, everything else is a library.
BACKEND_ROOT = Path(__file__).resolve().parents[3]
#: Frames of the monitoring and error-handling machinery say nothing about where the bug is.
_IGNORED_IN_APP = ("app/monitoring/", "app/error_handlers.py")
#: ...except the alerts and the metrics, which moved under monitoring/ (#16) but are code with bugs of their own:
#: a failed delivery is grouped by the alerts code that failed, as before the move, not by the job worker above it.
_IN_APP_UNDER_MONITORING = ("app/monitoring/alerts/", "app/monitoring/metrics.py")
MAX_FRAMES = 12

_EMAIL = re.compile(r"[\w.+-]+@[\w-]+(?:\.[\w-]+)+")
_UUID = re.compile(r"\b[0-9a-fA-F]{8}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{12}\b")
_HEX = re.compile(r"\b(?:0x)?(?=[0-9a-fA-F]*\d)[0-9a-fA-F]{8,}\b")
_NUMBER = re.compile(r"(?<![A-Za-z_])[-+]?\d+(?:[.,:]\d+)*")


def normalise_message(message: str) -> str:
    """The message with emails, UUIDs, hex ids and numbers masked (the part that groups)."""
    text = _EMAIL.sub("<email>", message)
    text = _UUID.sub("<uuid>", text)
    text = _HEX.sub("<hex>", text)
    text = _NUMBER.sub("<n>", text)
    return " ".join(text.split())[:300]


# What each code object's frame contributes under BACKEND_ROOT (its label, or None for a library or ignored
# frame): the walk runs on every error answered, over the same few dozen Flask and werkzeug functions. Keyed by
# (code, file name): code objects compare equal without their file name, so two identical functions on the same
# line of two modules would otherwise share the first one's label.
_LABELS: dict[tuple[CodeType, str], str | None] = {}
_MAX_LABELS = 4096  # code objects are a bounded set, except code made at run time (exec): start over past this


def _frame_label(code: CodeType, prefix: str) -> str | None:
    filename = code.co_filename
    if filename.startswith(prefix):
        relative = filename[len(prefix) :]
        if not relative.startswith(_IGNORED_IN_APP) or relative.startswith(_IN_APP_UNDER_MONITORING):
            return f"{relative}:{code.co_name}"
    return None


def in_app_frames(tb: TracebackType | None, root: Path = BACKEND_ROOT) -> list[str]:
    """`relative/path.py:function` for each traceback frame under `root`, innermost last."""
    prefix = str(root) + "/"
    frames: list[str] = []
    labels = _LABELS if root is BACKEND_ROOT else None
    while tb is not None:
        code = tb.tb_frame.f_code
        key = (code, code.co_filename)
        if labels is None:
            label = _frame_label(code, prefix)
        elif key in labels:
            label = labels[key]
        else:
            label = _frame_label(code, prefix)
            if len(labels) >= _MAX_LABELS:
                labels.clear()
            labels[key] = label
        if label is not None:
            frames.append(label)
        tb = tb.tb_next
    return frames[-MAX_FRAMES:]


def exception_frames(exc: BaseException | None, root: Path = BACKEND_ROOT) -> list[str]:
    """The in-app frames of `exc`, following `raise ... from` causes to the innermost in-app code."""
    if exc is None or (exc.__traceback__ is None and exc.__cause__ is None and exc.__context__ is None):
        return []  # an error built and answered without being raised (most 4xx)
    seen: set[int] = set()
    frames: list[str] = []
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        frames = in_app_frames(exc.__traceback__, root) + frames
        exc = exc.__cause__ or exc.__context__
    # Deduplicate consecutive repeats (the same view appears in the cause and in the wrapper).
    compact = [f for i, f in enumerate(frames) if i == 0 or frames[i - 1] != f]
    return compact[-MAX_FRAMES:]


def fingerprint(
    *,
    source: str,
    exc_type: str | None,
    code: str,
    endpoint: str | None,
    frames: Sequence[str],
    message: str,
    extra: Iterable[str] = (),
) -> str:
    """A stable 40-character hex id of the group this occurrence belongs to."""
    parts = [source, exc_type or "-", code, endpoint or "-", "|".join(frames), normalise_message(message), *extra]
    return hashlib.sha1("\x1f".join(parts).encode("utf-8"), usedforsecurity=False).hexdigest()
