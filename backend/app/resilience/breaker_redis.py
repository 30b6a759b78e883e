"""Circuit-breaker state shared by every process through Redis, with an honest local fallback.

Each breaker is two hashes: `<prefix>cb:<name>` (state, opened_at, epoch, trials, trial_ok,
half_open_at) and `<prefix>cb:<name>:w` (window buckets `<index>:c|f|s`). Admission and recording
are Lua scripts, so the read-decide-write of a transition is atomic across processes; the rules
are those of `breaker_store` (the same tests run against both stores).

Redis must never make a call slow or hang (SPEC section 10: redis-py's default retry turned one
call into 6.8 s). The client has short socket timeouts and no retries. When Redis fails, this
store switches to the in-memory store, seeded with the last state Redis reported, and says so:
`storage` becomes "local-fallback", a warning is logged once per outage, and Redis is probed
again at most every `probe_interval` seconds. When Redis answers again, breakers that opened
locally during the outage are written back (the pessimistic state wins), and Redis is the source
of truth again.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar

import redis

from .breaker_store import (
    AdminActionNotAppliedError,
    Admission,
    BreakerConfig,
    BreakerState,
    MemoryBreakerStore,
    Outcome,
    build_snapshot,
)

logger = logging.getLogger(__name__)

T = TypeVar("T")

# KEYS: state hash. ARGV: now, recovery_timeout, half_open_max_calls, trial_timeout.
# Returns {state, epoch, admit (1 normal, 2 trial, 0 rejected), wait, transitioned (0/1), opened_at}.
_ACQUIRE = """
local s = redis.call('HMGET', KEYS[1], 'state', 'opened_at', 'epoch', 'trials', 'half_open_at')
local state = s[1] or 'closed'
local epoch = tonumber(s[3] or '0')
local now = tonumber(ARGV[1])
if state == 'closed' or state == 'disabled' then return {state, epoch, 1, '', 0, ''} end
if state == 'forced_open' then return {state, epoch, 0, ARGV[2], 0, s[2] or ''} end
local moved = 0
local trials = tonumber(s[4] or '0')
local half_open_at = tonumber(s[5] or '0')
if state == 'open' then
  local opened_at = tonumber(s[2]) or now
  local wait = opened_at + tonumber(ARGV[2]) - now
  if wait > 0 then return {state, epoch, 0, tostring(wait), 0, s[2] or ''} end
  state, epoch, trials, half_open_at, moved = 'half_open', epoch + 1, 0, now, 1
  redis.call('HSET', KEYS[1], 'state', state, 'epoch', epoch, 'trials', 0, 'trial_ok', 0, 'half_open_at', ARGV[1])
end
local max = tonumber(ARGV[3])
if trials >= max and now - half_open_at >= tonumber(ARGV[4]) then
  trials = 0
  redis.call('HSET', KEYS[1], 'half_open_at', ARGV[1])
end
if trials < max then
  redis.call('HSET', KEYS[1], 'trials', trials + 1)
  return {state, epoch, 2, '', moved, s[2] or ''}
end
return {state, epoch, 0, '', moved, s[2] or ''}
"""

# KEYS: state hash, window hash. ARGV: now, epoch, trial (0/1), outcome (0 ok, 1 failure, 2 slow),
# bucket_width, buckets, min_calls, failure_rate_threshold, half_open_max_calls.
# Returns {} or {old_state, new_state}.
_RECORD = """
local s = redis.call('HMGET', KEYS[1], 'state', 'epoch', 'trials', 'trial_ok')
local state = s[1] or 'closed'
local epoch = tonumber(s[2] or '0')
local outcome = tonumber(ARGV[4])
local failed = outcome ~= 0
if ARGV[3] == '1' and state == 'half_open' and epoch == tonumber(ARGV[2]) then
  local trials = math.max(0, tonumber(s[3] or '0') - 1)
  if failed then
    redis.call('HSET', KEYS[1], 'state', 'open', 'opened_at', ARGV[1], 'epoch', epoch + 1, 'trials', 0, 'trial_ok', 0)
    return {'half_open', 'open'}
  end
  local ok = tonumber(s[4] or '0') + 1
  if ok >= tonumber(ARGV[9]) then
    redis.call('HSET', KEYS[1], 'state', 'closed', 'opened_at', '', 'epoch', epoch + 1, 'trials', 0, 'trial_ok', 0)
    redis.call('DEL', KEYS[2])
    return {'half_open', 'closed'}
  end
  redis.call('HSET', KEYS[1], 'trials', trials, 'trial_ok', ok)
  return {}
end
if state ~= 'closed' then return {} end
local width = tonumber(ARGV[5])
local buckets = tonumber(ARGV[6])
local index = math.floor(tonumber(ARGV[1]) / width)
local fresh = redis.call('HINCRBY', KEYS[2], index .. ':c', 1) == 1
if fresh then redis.call('PEXPIRE', KEYS[2], math.ceil(width * buckets * 2000)) end
if not failed then
  if not fresh then return {} end
end
if failed then redis.call('HINCRBY', KEYS[2], index .. ':f', 1) end
if outcome == 2 then redis.call('HINCRBY', KEYS[2], index .. ':s', 1) end
local all = redis.call('HGETALL', KEYS[2])
local calls, failures = 0, 0
for i = 1, #all, 2 do
  local key = all[i]
  local sep = string.find(key, ':', 1, true)
  local b = tonumber(string.sub(key, 1, sep - 1))
  local kind = string.sub(key, sep + 1)
  if b <= index - buckets then
    redis.call('HDEL', KEYS[2], key)
  elseif kind == 'c' then
    calls = calls + tonumber(all[i + 1])
  elseif kind == 'f' then
    failures = failures + tonumber(all[i + 1])
  end
end
if failed and calls >= tonumber(ARGV[7]) and failures / calls >= tonumber(ARGV[8]) then
  redis.call('HSET', KEYS[1], 'state', 'open', 'opened_at', ARGV[1], 'epoch', epoch + 1, 'trials', 0, 'trial_ok', 0)
  return {'closed', 'open'}
end
return {}
"""

# KEYS: state hash, window hash. ARGV: new state, now. Returns the old state.
_SET_STATE = """
local old = redis.call('HGET', KEYS[1], 'state') or 'closed'
local epoch = tonumber(redis.call('HGET', KEYS[1], 'epoch') or '0')
local opened_at = ''
if ARGV[1] == 'forced_open' then opened_at = ARGV[2] end
redis.call('HSET', KEYS[1], 'state', ARGV[1], 'epoch', epoch + 1, 'trials', 0, 'trial_ok', 0, 'opened_at', opened_at)
redis.call('DEL', KEYS[2])
return old
"""

# KEYS: state hash. ARGV: state, opened_at. Write a locally opened state back only if Redis is closed.
_RESYNC = """
local cur = redis.call('HGET', KEYS[1], 'state') or 'closed'
if cur ~= 'closed' then return 0 end
local epoch = tonumber(redis.call('HGET', KEYS[1], 'epoch') or '0')
redis.call('HSET', KEYS[1], 'state', ARGV[1], 'opened_at', ARGV[2], 'epoch', epoch + 1, 'trials', 0, 'trial_ok', 0)
return 1
"""


def _opt_float(value: Any) -> float | None:
    if value is None or value in (b"", ""):
        return None
    return float(value)


class RedisBreakerStore:
    """Breaker state in Redis (shared by every process), falling back to local state when Redis fails."""

    def __init__(self, client: redis.Redis, prefix: str = "oriel:", probe_interval: float = 2.0) -> None:
        self.client = client
        self.prefix = prefix
        self.probe_interval = probe_interval
        self.local = MemoryBreakerStore()
        self._acquire = client.register_script(_ACQUIRE)
        self._record = client.register_script(_RECORD)
        self._set_state = client.register_script(_SET_STATE)
        self._resync = client.register_script(_RESYNC)
        self._down_since: float | None = None
        self._next_probe = 0.0
        self._last_seen: dict[str, tuple[BreakerState, float | None]] = {}
        self._lock = threading.Lock()
        self.outages = 0

    @property
    def storage(self) -> str:
        """'redis', or 'local-fallback' while Redis is unreachable."""
        return "redis" if self._down_since is None else "local-fallback"

    @property
    def shared_through(self) -> str:
        """Where admin actions are shared: Redis (at once)."""
        return "redis"

    def _keys(self, name: str) -> list[str]:
        base = f"{self.prefix}cb:{name}"
        return [base, base + ":w"]

    def _run(self, remote: Callable[[], T], local: Callable[[], T]) -> T:
        """Run against Redis; on a Redis failure (or during an outage, between probes) run locally."""
        if self._down_since is not None:
            if time.monotonic() < self._next_probe:
                return local()
            try:
                self._came_back()  # re-sync first, so this very call is answered from the merged state
            except redis.RedisError as exc:
                self._went_down(exc)
                return local()
        try:
            return remote()
        except redis.RedisError as exc:
            self._went_down(exc)
            return local()

    def _went_down(self, exc: BaseException) -> None:
        with self._lock:
            self._next_probe = time.monotonic() + self.probe_interval
            if self._down_since is not None:
                return
            self._down_since = time.monotonic()
            self.outages += 1
            # Start local state where Redis left it, so an open breaker stays open.
            self.local.clear()
            for name, (state, opened_at) in self._last_seen.items():
                if state in (BreakerState.OPEN, BreakerState.FORCED_OPEN, BreakerState.DISABLED):
                    self.local.seed(name, state, opened_at)
        logger.warning(
            "Redis unreachable for circuit-breaker state (%s: %s); using local per-process state until it returns",
            type(exc).__name__,
            exc,
        )

    def _came_back(self) -> None:
        """Probe Redis; if it answers, write locally opened breakers back and share state again."""
        self.client.ping()  # raises while Redis is still unreachable
        with self._lock:
            if self._down_since is None:
                return
            outage = time.monotonic() - self._down_since
            pending = [(n, self.local.snapshot(n, BreakerConfig(), time.time())) for n in self.local.names()]
            synced = []
            for name, snap in pending:
                # The pessimistic state wins: a breaker that opened during the outage stays open everywhere.
                if snap["state"] in (BreakerState.OPEN.value, BreakerState.FORCED_OPEN.value):
                    args = [snap["state"], snap["opened_at"] or ""]
                    if self._resync(keys=self._keys(name)[:1], args=args):
                        synced.append(name)
            self._down_since = None
            self.local.clear()
        logger.warning(
            "Redis reachable again after %.1fs; breaker state is shared again (re-synced locally opened: %s)",
            outage,
            ", ".join(synced) or "none",
        )

    def acquire(self, name: str, config: BreakerConfig, now: float) -> Admission:
        """Admit or reject one call (atomically in Redis)."""

        def remote() -> Admission:
            args = [repr(now), repr(config.recovery_timeout), config.half_open_max_calls, repr(config.trial_timeout)]
            raw_state, epoch, admit, wait, moved, opened_at = self._acquire(keys=self._keys(name)[:1], args=args)
            state = BreakerState(raw_state.decode() if isinstance(raw_state, bytes) else raw_state)
            opened = _opt_float(opened_at)
            self._last_seen[name] = (state, opened)
            retry_after = _opt_float(wait)
            if admit == 0 and retry_after is None:
                retry_after = config.half_open_retry_after
            return Admission(
                allowed=admit != 0,
                state=state,
                epoch=int(epoch),
                trial=admit == 2,
                retry_after=retry_after if admit == 0 else None,
                transition=(BreakerState.OPEN, BreakerState.HALF_OPEN) if moved else None,
                opened_at=opened,
            )

        return self._run(remote, lambda: self.local.acquire(name, config, now))

    def record(
        self, name: str, config: BreakerConfig, now: float, outcome: Outcome, epoch: int, trial: bool
    ) -> tuple[BreakerState, BreakerState] | None:
        """Count one outcome (atomically in Redis); returns the transition it caused."""
        code = {Outcome.SUCCESS: 0, Outcome.FAILURE: 1, Outcome.SLOW: 2}[outcome]

        def remote() -> tuple[BreakerState, BreakerState] | None:
            args = [
                repr(now),
                epoch,
                1 if trial else 0,
                code,
                repr(config.bucket_width),
                config.buckets,
                config.min_calls,
                repr(config.failure_rate_threshold),
                config.half_open_max_calls,
            ]
            result = self._record(keys=self._keys(name), args=args)
            if not result:
                return None
            old, new = (BreakerState(v.decode() if isinstance(v, bytes) else v) for v in result)
            self._last_seen[name] = (new, now if new is BreakerState.OPEN else None)
            return old, new

        return self._run(remote, lambda: self.local.record(name, config, now, outcome, epoch, trial))

    def set_state(self, name: str, state: BreakerState, now: float) -> tuple[BreakerState, BreakerState] | None:
        """Admin override, seen by every process; raises `AdminActionNotAppliedError` when Redis is unreachable.

        Never applied to the local fallback alone: that would change this process only (a CLI's, say) and
        report a success the serving processes never see.
        """
        try:
            if self._down_since is not None:
                self._came_back()  # an admin action always asks Redis, whatever the probe interval says
            old_raw = self._set_state(keys=self._keys(name), args=[state.value, repr(now)])
        except redis.RedisError as exc:
            self._went_down(exc)
            raise AdminActionNotAppliedError(
                f"The admin action was not applied: Redis, where every process reads breaker state, is unreachable "
                f"({type(exc).__name__}). Nothing was changed.",
                details={"service": name[:64], "shared_through": "redis"},
            ) from exc
        old = BreakerState(old_raw.decode() if isinstance(old_raw, bytes) else old_raw)
        self._last_seen[name] = (state, now if state is BreakerState.FORCED_OPEN else None)
        return (old, state) if old is not state else None

    def snapshot(self, name: str, config: BreakerConfig, now: float) -> dict[str, Any]:
        """State and window counts, read in one round trip."""

        def remote() -> dict[str, Any]:
            state_key, window_key = self._keys(name)
            with self.client.pipeline(transaction=False) as pipe:
                pipe.hgetall(state_key)
                pipe.hgetall(window_key)
                raw, window_raw = pipe.execute()
            fields = {k.decode(): v.decode() for k, v in raw.items()}
            current = math.floor(now / config.bucket_width)
            counts = [0, 0, 0]
            for key, value in window_raw.items():
                index, kind = key.decode().split(":")
                if int(index) > current - config.buckets:
                    counts["cfs".index(kind)] += int(value)
            state = BreakerState(fields.get("state") or "closed")
            snap = build_snapshot(
                state,
                _opt_float(fields.get("opened_at")),
                (counts[0], counts[1], counts[2]),
                int(fields.get("trials") or 0) if state is BreakerState.HALF_OPEN else 0,
                config,
                now,
            )
            snap["storage"] = "redis"
            return snap

        def local() -> dict[str, Any]:
            snap = self.local.snapshot(name, config, now)
            snap["storage"] = "local-fallback"
            return snap

        return self._run(remote, local)

    def delete_all(self) -> int:
        """Remove every key under this store's prefix (tests and teardown); returns how many."""
        keys = list(self.client.scan_iter(match=f"{self.prefix}cb:*", count=500))
        return self.client.delete(*keys) if keys else 0
