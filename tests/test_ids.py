"""Request and error-event ids: UUIDv7, time-ordered, unguessable, 32 hex digits."""

from __future__ import annotations

import time
import uuid

from backend.app.request_context import new_request_id
from backend.app.utils.ids import uuid7_hex, uuid7_hex_batch


def test_a_v7_id_is_a_valid_uuid_carrying_its_millisecond() -> None:
    before = time.time_ns() // 1_000_000
    value = uuid7_hex()
    after = time.time_ns() // 1_000_000
    parsed = uuid.UUID(value)
    assert len(value) == 32 and value == value.lower()
    assert parsed.version == 7 and parsed.variant == uuid.RFC_4122
    assert before <= parsed.int >> 80 <= after


def test_ids_sort_by_time_and_differ_within_one_millisecond() -> None:
    ids = uuid7_hex_batch([1_000, 1_000, 1_001, 2_000])
    assert len(set(ids)) == 4
    assert ids[2] > max(ids[:2]) and ids[3] > ids[2]
    # 74 random bits: the same millisecond and the same random bytes give the same id, nothing else does.
    assert uuid7_hex(5, b"\x00" * 10) == uuid7_hex(5, b"\x00" * 10) != uuid7_hex(5, b"\x00" * 9 + b"\x01")


def test_request_ids_are_v7() -> None:
    assert uuid.UUID(new_request_id()).version == 7
