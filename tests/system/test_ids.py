"""Request and error-event ids: UUIDv7, time-ordered, unguessable, 32 hex digits."""

from __future__ import annotations

import os
import threading
import time
import uuid

import pytest

from backend.app.ids import uuid7_hex, uuid7_hex_batch
from backend.app.request_id import new_request_id


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


def test_ids_stay_distinct_across_pool_refills_and_threads() -> None:
    # 8 threads x 1,000 ids: several refills of the 256-id pool, no byte handed out twice.
    found: list[list[str]] = [[] for _ in range(8)]

    def draw(out: list[str]) -> None:
        out.extend(uuid7_hex() for _ in range(1_000))

    threads = [threading.Thread(target=draw, args=(out,)) for out in found]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    ids = [value for out in found for value in out]
    assert len(set(ids)) == len(ids) == 8_000


def test_a_forked_child_never_hands_out_its_parents_pooled_randomness() -> None:
    uuid7_hex()  # the parent's pool now holds bytes for 255 more ids
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: its next ids, sent back to the parent
        os.close(read)
        os.write(write, ",".join(uuid7_hex(0) for _ in range(5)).encode())
        os._exit(0)
    os.close(write)
    with os.fdopen(read) as pipe:
        child = pipe.read().split(",")
    os.waitpid(pid, 0)
    parent = [uuid7_hex(0) for _ in range(5)]
    assert len(child) == 5 and not set(child) & set(parent)


def test_point9_an_id_from_the_pool_takes_no_lock_between_refills(monkeypatch: pytest.MonkeyPatch) -> None:
    """Between refills an id is a timestamp and a pre-formatted random tail: no lock, no bytes to convert."""
    from backend.app import ids

    ids._pool._reset()
    first = uuid7_hex()  # draws a block of 256 tails under the lock

    class NoLock:
        def __enter__(self) -> None:
            raise AssertionError("the pool's lock was taken")

        def __exit__(self, *_exc: object) -> None:
            return None

    monkeypatch.setattr(ids._pool, "_lock", NoLock())
    rest = [uuid7_hex() for _ in range(255)]
    assert len({first, *rest}) == 256
    assert all(uuid.UUID(value).version == 7 and uuid.UUID(value).variant == uuid.RFC_4122 for value in rest)
    with pytest.raises(AssertionError):
        uuid7_hex()  # the 257th needs a new block
