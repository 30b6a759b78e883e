"""Uploaded audio and the renders made from it."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, Boolean, DateTime, Float, ForeignKey, Index, Integer, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from ..extensions import db
from ..timeutil import iso_offset, iso_to_second, utcnow

# Render statuses: queued → running → succeeded | failed (a retried job may go running → queued).
QUEUED, RUNNING, SUCCEEDED, FAILED = "queued", "running", "succeeded", "failed"
RENDER_STATUSES = (QUEUED, RUNNING, SUCCEEDED, FAILED)


class Upload(db.Model):  # type: ignore[name-defined]
    """An audio file a user uploaded: what it is (by content) and where it is stored."""

    __tablename__ = "uploads"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    filename: Mapped[str] = mapped_column(String(255))  # sanitised original name, for display only
    format: Mapped[str] = mapped_column(String(16))  # recognised from the content, not the name
    content_type: Mapped[str] = mapped_column(String(64))
    size: Mapped[int] = mapped_column(Integer)
    duration_seconds: Mapped[float] = mapped_column(Float)
    storage_key: Mapped[str] = mapped_column(String(512))
    location: Mapped[str] = mapped_column(String(16))  # "bucket" or "local" (fallback)
    degraded: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)

    def to_dict(self) -> dict[str, Any]:
        """The public view: what was recognised and where the file went."""
        return {
            "id": self.id,
            "filename": self.filename,
            "format": self.format,
            "content_type": self.content_type,
            "duration_seconds": self.duration_seconds,
            "size": self.size,
            "location": self.location,
            "degraded": self.degraded,
            "created_at": iso_offset(self.created_at),
        }


class Render(db.Model):  # type: ignore[name-defined]
    """One render request: its settings, progress, outcome and the credit it consumed."""

    __tablename__ = "renders"
    __table_args__ = (Index("ix_renders_user_created", "user_id", "id"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))  # ix_renders_user_created
    upload_id: Mapped[int] = mapped_column(ForeignKey("uploads.id", ondelete="CASCADE"), index=True)
    preset: Mapped[str] = mapped_column(String(32))
    resolution: Mapped[str] = mapped_column(String(16))
    fps: Mapped[int] = mapped_column(Integer)
    status: Mapped[str] = mapped_column(String(16), default=QUEUED, index=True)
    progress: Mapped[int] = mapped_column(Integer, default=0)
    # Bumped by every run that claims the render; a run writes its outcome only while it is the latest.
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    request_id: Mapped[str | None] = mapped_column(String(128), nullable=True)
    video_key: Mapped[str | None] = mapped_column(String(512), nullable=True)
    video_size: Mapped[int | None] = mapped_column(Integer, nullable=True)
    video_location: Mapped[str | None] = mapped_column(String(16), nullable=True)
    video_degraded: Mapped[bool] = mapped_column(Boolean, default=False)
    error_code: Mapped[str | None] = mapped_column(String(64), nullable=True)
    error_status: Mapped[int | None] = mapped_column(Integer, nullable=True)
    error_message: Mapped[str | None] = mapped_column(Text, nullable=True)
    error_details: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    error_recoverable: Mapped[bool | None] = mapped_column(Boolean, nullable=True)
    credit_refunded: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    started_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)

    @property
    def credit_ref(self) -> str:
        """The credit ledger reference of this render (consume and refund use the same one)."""
        return f"render:{self.id}"

    def error_object(self) -> dict[str, Any] | None:
        """The stored failure in the shape of the API error envelope's `error` object."""
        if self.status != FAILED or self.error_code is None:
            return None
        return {
            "code": self.error_code,
            "message": self.error_message or "",
            "details": self.error_details or {},
            "timestamp": iso_to_second(self.finished_at),
            "recoverable": bool(self.error_recoverable),
            "status": self.error_status or 500,
            "request_id": self.request_id,
            "doc_url": f"/api/errors/catalog#{self.error_code}",
        }

    def to_dict(self) -> dict[str, Any]:
        """The public view of the render."""
        video = None
        if self.status == SUCCEEDED and self.video_key:
            video = {
                "size": self.video_size,
                "location": self.video_location,
                "degraded": self.video_degraded,
                "download_path": f"/api/renders/{self.id}/download",
            }
        return {
            "id": self.id,
            "upload_id": self.upload_id,
            "preset": self.preset,
            "resolution": self.resolution,
            "fps": self.fps,
            "status": self.status,
            "progress": self.progress,
            "video": video,
            "error": self.error_object(),
            "credit_refunded": self.credit_refunded,
            "created_at": iso_offset(self.created_at),
            "started_at": iso_offset(self.started_at),
            "finished_at": iso_offset(self.finished_at),
        }
