"""Fuzzing: schemathesis generates requests from /api/openapi.json of the real app (gunicorn, 4 workers,
PostgreSQL, Redis, Stripe/SendGrid peers on loopback) for every operation, unauthenticated and with a
user's and an admin's token, valid and invalid data.

Every response must: not be a 5xx unless an injected fault or a forced-open breaker explains it; be
JSON when it is an error (our envelope); conform to the OpenAPI document (status, content type, body
schema, headers); leak no traceback, path, SQL or configured secret.

`FUZZ_EXAMPLES` (default 20) is the number of generated cases per operation, identity and mode;
`FUZZ_MIN_REQUESTS` (default 5000) the number of requests the run must at least send. The figures
(requests, per-status counts) are printed and written to `FUZZ_REPORT` when that is set.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import time
from collections import Counter
from pathlib import Path
from typing import Any

import hypothesis
import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, Phase, given
from schemathesis import GenerationMode
from schemathesis.checks import CHECKS, load_all_checks
from schemathesis.core.failures import FailureGroup

from tests.harness.app import ADMIN_EMAIL
from tests.harness.contract import LEAK_PATTERNS
from tests.harness.system import CANARIES, System, running_system

pytestmark = [pytest.mark.slow, pytest.mark.postgres, pytest.mark.redis, pytest.mark.timeout(900)]

EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "20"))
MIN_REQUESTS = int(os.environ.get("FUZZ_MIN_REQUESTS", "5000"))
CHECK_NAMES = (
    "not_a_server_error",
    "status_code_conformance",
    "content_type_conformance",
    "response_schema_conformance",
    "response_headers_conformance",
)
#: Error codes an injected fault or an admin-forced breaker produces (a dependency is "down").
DEPENDENCY_CODES = {"EXTERNAL_SERVICE_ERROR", "SERVICE_UNAVAILABLE", "CIRCUIT_OPEN", "DATABASE_UNAVAILABLE"}


class Tally:
    """What the fuzzer sent and what came back; failures are collected, not raised, so one run finds all."""

    def __init__(self) -> None:
        self.sent = 0
        self.statuses: Counter[int] = Counter()
        self.by_identity: Counter[str] = Counter()
        self.injected_5xx = 0
        self.http_seconds = 0.0
        self.failures: dict[str, str] = {}

    def fail(self, key: str, detail: str) -> None:
        """Record one kind of failure once (with its first example)."""
        self.failures.setdefault(key, detail[:1500])


def _leaks(text: str, *, strict: bool) -> list[str]:
    found = [name for name, secret in CANARIES.items() if secret in text]
    if strict:  # error bodies are ours: no traceback, path or SQL at all
        found += [p.pattern for p in LEAK_PATTERNS if p.search(text)]
    elif "Traceback (most recent call last)" in text:
        found.append("traceback")
    return found


def _fault_active(system: System, admin: dict[str, str]) -> bool:
    """Whether a fault rule or a non-closed breaker explains a 5xx right now."""
    faults = requests.get(system.base_url + "/admin/api/monitoring/faults", headers=admin, timeout=10).json()
    breakers = requests.get(system.base_url + "/admin/api/monitoring/circuit-breakers", headers=admin, timeout=10)
    states = re.findall(r'"state": ?"(\w+)"', breakers.text)
    return bool(faults.get("rules") or faults.get("faults")) or any(state != "closed" for state in states)


def _judge(system: System, tally: Tally, case: Any, response: Any, identity: str, admin: dict[str, str]) -> None:
    label = f"{case.method} {case.path} [{identity}]"
    status = response.status_code
    tally.sent += 1
    tally.statuses[status] += 1
    tally.by_identity[identity] += 1
    text = response.text
    if status >= 400:
        try:
            envelope = response.json()
            assert isinstance(envelope, dict) and isinstance(envelope.get("error"), dict)
            code = envelope["error"].get("code")
        except (ValueError, AssertionError):
            tally.fail(f"non-JSON error {status} {label}", text[:300])
            return
        if status >= 500:
            if code in DEPENDENCY_CODES and _fault_active(system, admin):
                tally.injected_5xx += 1
            else:
                tally.fail(f"5xx {status} {code} {label}", f"{case.as_curl_command()}\n{text[:500]}")
    leaks = _leaks(text.replace(response.headers.get("X-Request-ID", "\0"), ""), strict=status >= 400)
    if leaks:
        tally.fail(f"leak {leaks} {label}", text[:500])
    checks = [CHECKS.get_one(name) for name in CHECK_NAMES]
    try:
        case.validate_response(response, checks=checks)
    except FailureGroup as exc:  # every failed check of one response
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        tally.fail(f"schema {first[:120]} {label}", f"{str(exc)[:1200]}\n{case.as_curl_command()}")


def _fresh_token(system: System, identity: str) -> dict[str, str]:
    """Authorization headers of a new login as the user or the admin."""
    email = ADMIN_EMAIL if identity == "admin" else "fuzz-user@example.com"
    return {"Authorization": f"Bearer {system.token(email)}"}


def _runner(
    system: System,
    tally: Tally,
    sessions: list[requests.Session],
    operation: Any,
    mode: GenerationMode,
    identity: str,
    headers: dict[str, str],
    admin: dict[str, str],
) -> Any:
    """A hypothesis test that sends EXAMPLES generated cases of one operation as one identity."""

    @hypothesis.settings(
        max_examples=EXAMPLES,
        deadline=None,
        database=None,
        derandomize=True,
        phases=[Phase.explicit, Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    @given(case=operation.as_strategy(generation_mode=mode))
    def run(case: Any) -> None:
        if headers:  # the identity's token replaces whatever the generator put there
            case.headers = {**(case.headers or {}), **headers}
        started = time.perf_counter()
        session = sessions[tally.sent % len(sessions)]
        response = case.call(base_url=system.base_url, session=session, timeout=30)
        tally.http_seconds += time.perf_counter() - started
        _judge(system, tally, case, response, identity, admin)

    return run


@pytest.fixture(scope="module")
def fuzz_system(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """The system under fuzz: rate limits off (else most cases would be 429), fault injection on."""
    workdir = tmp_path_factory.mktemp("fuzz")
    with running_system(
        workdir,
        workers=4,
        threads=4,
        redis_db=7,
        extra={"RATELIMIT_ENABLED": "false", "FAULT_INJECTION_ENABLED": "true"},
    ) as system:
        yield system


def test_fuzz_every_operation_authenticated_and_not(fuzz_system: System) -> None:
    system = fuzz_system
    load_all_checks()
    admin = _fresh_token(system, "admin")
    identities = {"anonymous": {}, "user": _fresh_token(system, "user"), "admin": admin}
    raw = requests.get(system.base_url + "/api/openapi.json", timeout=10).json()
    schema = schemathesis.openapi.from_dict(raw)
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 40, len(operations)
    tally = Tally()
    started = time.monotonic()
    # Several keep-alive connections used in turn: the cases spread over the gunicorn workers without paying
    # a TCP handshake per request.
    sessions = [requests.Session() for _ in range(8)]
    for operation in operations:
        for identity in list(identities):
            for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
                run = _runner(system, tally, sessions, operation, mode, identity, identities[identity], admin)
                with contextlib.suppress(hypothesis.errors.Unsatisfiable):  # a negative mode with nothing to negate
                    run()
                if operation.path == "/api/auth/logout" and identity != "anonymous":
                    # The cases revoked this identity's token: log in again, or every later case would be a 401.
                    identities[identity] = _fresh_token(system, identity)
                    admin = identities["admin"]
            if identity == "admin":
                # An admin case may have forced a breaker open or added a fault: undo it for the next operation.
                sessions[0].delete(system.base_url + "/admin/api/monitoring/faults", headers=admin, timeout=10)
                sessions[0].post(
                    system.base_url + "/admin/api/monitoring/circuit-breakers/reset-all", headers=admin, timeout=10
                )
    report = {
        "requests": tally.sent,
        "operations": len(operations),
        "examples_per_operation_identity_mode": EXAMPLES,
        "by_identity": dict(tally.by_identity),
        "statuses": {str(k): v for k, v in sorted(tally.statuses.items())},
        "injected_5xx": tally.injected_5xx,
        "http_seconds": round(tally.http_seconds, 1),
        "seconds": round(time.monotonic() - started, 1),
        "failures": len(tally.failures),
    }
    print("FUZZ", json.dumps(report))
    if os.environ.get("FUZZ_REPORT"):
        Path(os.environ["FUZZ_REPORT"]).write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    assert not tally.failures, json.dumps(tally.failures, indent=2)[:20000]
    assert tally.sent >= MIN_REQUESTS, report
