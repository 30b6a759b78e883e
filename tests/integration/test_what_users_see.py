"""What users see: it says what does not work, and health says when nothing serves the queue (#15 point 5)."""

from __future__ import annotations

import io
import threading
import time
from collections.abc import Callable

from flask import Flask

from backend.app.jobs.worker import Worker, WorkerOptions
from tests.harness.app import ADMIN_EMAIL, bearer, login
from tests.harness.peers.audio import AudioFactory

BREAKERS = "/admin/api/monitoring/circuit-breakers"


def test_point5_features_that_are_not_set_up_are_said_not_to_work(app: Flask) -> None:
    """No Stripe, no SendGrid: not "every feature works normally" while every checkout fails."""
    client = app.test_client()
    user = bearer(login(client, "buyer@example.com")["access_token"])
    checkout = client.post("/api/payments/checkout", json={"pack": "starter"}, headers=user)
    assert checkout.status_code == 503 and checkout.get_json()["error"]["code"] == "SERVICE_NOT_CONFIGURED"

    mode = client.get("/api/errors/degradation-mode").get_json()
    listed = {s["service"]: s for s in mode["services"]}
    assert set(listed) == {"stripe", "email"}
    stripe = listed["stripe"]
    assert stripe["state"] == "not_configured" and stripe["features"] == ["payments"]
    assert stripe["user_impact"] == "Buying credits is not available: payments are not set up on this server."
    assert listed["email"]["user_impact"].startswith("Emails are not sent")
    assert all(s["fallback_active"] is False and s["fallback"] is None for s in listed.values())
    # Not an outage: the level stays ok, and the public view names the features, not the services.
    assert mode["degraded"] is False and mode["level"] == "ok"
    public = client.get("/api/errors/system-health")
    assert public.get_json() == {
        "status": "ok",
        "degraded_features": [],
        "unavailable_features": ["email notifications", "payments"],
    }
    assert "stripe" not in public.get_data(as_text=True).lower()
    # An admin is not notified about a set-up choice as if it were an incident.
    admin = bearer(login(client, ADMIN_EMAIL)["access_token"])
    notes = client.get("/api/errors/notifications", headers=admin).get_json()["notifications"]
    assert not any(n["id"].startswith("breaker:") for n in notes)


def test_point5_a_forced_open_breaker_of_local_storage_degrades_nothing(app: Flask, audio_files: AudioFactory) -> None:
    """No bucket: uploads go to the local disk, so a forced-open storage breaker is no outage and no claim."""
    client = app.test_client()
    admin = bearer(login(client, ADMIN_EMAIL)["access_token"])
    assert client.post(f"{BREAKERS}/storage/force-open", headers=admin).status_code == 200

    mode = client.get("/api/errors/degradation-mode").get_json()
    assert "storage" not in {s["service"] for s in mode["services"]}
    assert not any("copied to cloud storage" in s["user_impact"] for s in mode["services"])
    assert mode["level"] == "ok" and client.get("/api/errors/system-health").get_json()["degraded_features"] == []

    user = bearer(login(client, "uploader@example.com")["access_token"])
    wav = audio_files.make("wav", seconds=0.3).read_bytes()
    upload = client.post(
        "/api/uploads", data={"file": (io.BytesIO(wav), "tone.wav")}, headers=user, content_type="multipart/form-data"
    )
    assert upload.status_code == 201, upload.get_json()  # and uploads indeed work


def test_point5_the_queue_is_not_ok_without_a_live_worker(make_app: Callable[..., Flask]) -> None:
    """`workers_alive: 0` is a queue nobody serves: degraded (with what waits), ok again once a worker beats."""
    app = make_app()
    client = app.test_client()
    admin = bearer(login(client, ADMIN_EMAIL)["access_token"])
    with app.app_context():
        from backend.app.jobs import enqueue

        enqueue("maintenance.noop", {}, delay=3600)  # scheduled, not ready: still nobody to run it

    def queue() -> dict:
        body = client.get("/admin/api/monitoring/health/services", headers=admin).get_json()
        return {**body["services"]["queue"]["probe"], "overall": body["status"]}

    idle = queue()
    assert (idle["status"], idle["detail"], idle["workers_alive"]) == ("degraded", "no live worker", 0)
    assert idle["overall"] == "degraded"

    options = WorkerOptions(poll_seconds=0.1, install_signals=False, schedule=False, max_seconds=30)
    worker = Worker(app, options)
    thread = threading.Thread(target=worker.run, name="test-worker", daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 10
        while (served := queue())["status"] != "ok":
            assert time.monotonic() < deadline, served
            time.sleep(0.1)
        assert served["workers_alive"] == 1 and served["detail"] is None
    finally:
        worker.stopping.set()
        worker.force.set()
        thread.join(15)
