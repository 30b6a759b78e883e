"""A render, its credit and its job are written together, and a render whose job dies is settled exactly once.

- `POST /api/renders` writes the render row, the credit ledger row and the job in one transaction: if
  the job cannot be recorded (the process dies there, here an injected failure), nothing remains;
- a job whose last attempt is lost with its worker ends dead; its `settle_failed` compensation marks
  the render failed, refunds the credit and emails the user, once, however often the sweep runs.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta
from typing import Any

import pytest
from flask import Flask
from sqlalchemy import func, select, update

from backend.app import timeutil
from backend.app.extensions import db
from backend.app.jobs import records
from backend.app.jobs.compensation import run_compensations, sweep_pending
from backend.app.models import CreditEntry, Render
from backend.app.models.job import Job
from backend.app.renders import runner
from tests.harness.peers.audio import AudioFactory
from tests.harness.peers.sendgrid_peer import SendGridPeer
from tests.harness.renders import DEDUP_HEADER, User, balance, render_app


def ledger(app: Flask, kind: str) -> int:
    """Credit ledger rows of `kind`."""
    with app.app_context():
        return int(db.session.scalar(select(func.count()).select_from(CreditEntry).where(CreditEntry.kind == kind)))


def test_a_render_whose_job_cannot_be_recorded_leaves_no_row_and_no_spent_credit(
    make_app: Callable[..., Flask], audio_files: AudioFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    app = render_app(make_app)
    user = User(app.test_client(), "atomic@example.com")
    upload_id = user.upload(audio_files.make("mp3").read_bytes())

    def crash(*_: Any, **__: Any) -> None:
        raise RuntimeError("the process died between the credit and the job")

    monkeypatch.setattr(runner, "enqueue", crash)
    assert user.start(upload_id).status_code == 500
    monkeypatch.undo()
    with app.app_context():
        assert db.session.scalar(select(func.count()).select_from(Render)) == 0
        assert db.session.scalar(select(func.count()).select_from(Job).where(Job.kind == "render")) == 0
    assert ledger(app, "consume") == 0 and balance(app, user.id) == 1

    assert user.start(upload_id).status_code == 202  # the same credit is still there to spend
    assert ledger(app, "consume") == 1 and balance(app, user.id) == 0


def test_a_render_job_lost_on_its_last_attempt_is_settled_once_by_its_compensation(
    make_app: Callable[..., Flask], sendgrid_peer: SendGridPeer, audio_files: AudioFactory
) -> None:
    app = render_app(make_app, sendgrid_peer, RENDER_JOB_MAX_ATTEMPTS=1)
    user = User(app.test_client(), "lost@example.com")
    render_id = user.start(user.upload(audio_files.make("mp3").read_bytes())).get_json()["render"]["id"]
    with app.app_context():
        # A worker claims the job, starts the render, and dies (no heartbeat, no outcome).
        claim = records.claim("dead-worker:1:abc", ["renders"], 1.0)
        assert claim is not None and claim.payload == {"render_id": render_id}
        db.session.execute(update(Render).where(Render.id == render_id).values(status="running", progress=40))
        db.session.commit()
        reaped = records.reap_expired(now=timeutil.utcnow() + timedelta(seconds=5))
        assert reaped == [(claim.id, "dead")]
        assert run_compensations(claim.id) == 1
        assert run_compensations(claim.id) == 0 and sweep_pending() == 0  # applied once, never again
        job = db.session.get(Job, claim.id)
        assert job is not None and job.last_error_code == "WORKER_LOST"
        assert [c["state"] for c in job.compensations] == ["done"]

    render = user.get(render_id)
    assert (render["status"], render["credit_refunded"]) == ("failed", True)
    assert (
        render["error"]["message"] == "The render could not finish: the worker running it stopped before it was done."
    )
    assert render["error"]["details"]["last_error_code"] == "WORKER_LOST"
    assert ledger(app, "refund") == 1 and balance(app, user.id) == 1
    assert sendgrid_peer.count(header=(DEDUP_HEADER, f"render-failed:{render_id}")) == 1

    with app.app_context():  # an admin requeue of the dead letter later: the render stays settled
        runner.run_render(render_id)
    assert ledger(app, "refund") == 1
    assert sendgrid_peer.count(header=(DEDUP_HEADER, f"render-failed:{render_id}")) == 1
