"""Request and response models of the renders blueprint (uploads, renders, their lists and downloads)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from ..edge.validation import Flag, StrictModel


class UploadForm(BaseModel):
    """Multipart form of `POST /api/uploads`: the audio file in the field `file`."""

    file: bytes = Field(description="WAV, MP3, OGG, FLAC, M4A or AAC; recognised by content, not by name")


class UploadOut(BaseModel):
    """An uploaded audio file: what it was recognised as and where it went."""

    id: int
    filename: str
    format: str
    content_type: str
    duration_seconds: float
    size: int
    location: Literal["bucket", "local"]
    degraded: bool
    created_at: str | None


class UploadEnvelope(BaseModel):
    """An upload wrapped in `upload`."""

    upload: UploadOut


MAX_PAGE = 100


class PageQuery(BaseModel):
    """Query of the caller's lists (uploads, renders): newest first, `limit` per page, `before` an id.

    Pass a page's `next_before` as `before` for the next one; it is null on the last page. An id cursor
    (not an offset) so a page never repeats or skips rows when new ones arrive meanwhile.
    """

    model_config = ConfigDict(extra="forbid")  # `?limt=5` is a typo to report, not a default to apply

    limit: int = Field(default=50, ge=1, le=MAX_PAGE)
    before: int | None = Field(default=None, ge=1, le=2**31 - 1)  # ids are INTEGER, like RenderRequest.upload_id


PAGE_QUERY_DOC = (
    ("limit", "integer", f"How many (1-{MAX_PAGE}, default 50)"),
    ("before", "integer", "Only ids below this one: the previous page's `next_before`"),
)


class UploadList(BaseModel):
    """A page of the caller's uploads, newest first; `next_before` is the `before` of the next page."""

    uploads: list[UploadOut]
    next_before: int | None


class RenderRequest(StrictModel):
    """A render of an uploaded file (one render credit)."""

    upload_id: int = Field(gt=0, le=2**31 - 1)  # uploads.id is INTEGER: a bigger id is invalid, not a 500
    preset: Literal["waveform", "spectrum", "cqt", "vectorscope"]
    resolution: Literal["320x180", "640x360", "1280x720", "1920x1080"] = "1280x720"
    fps: Literal[24, 30, 60] = 30


class RenderVideoOut(BaseModel):
    """The rendered video of a succeeded render."""

    size: int | None
    location: str | None
    degraded: bool
    download_path: str


class RenderErrorOut(BaseModel):
    """Why a render failed, in the shape of the error envelope's `error` object."""

    code: str
    message: str
    details: dict[str, object]
    timestamp: str | None
    recoverable: bool
    status: int
    request_id: str | None
    doc_url: str


class RenderOut(BaseModel):
    """A render: settings, status, progress and outcome."""

    id: int
    upload_id: int
    preset: str
    resolution: str
    fps: int
    status: Literal["queued", "running", "succeeded", "failed"]
    progress: int
    video: RenderVideoOut | None
    error: RenderErrorOut | None
    credit_refunded: bool
    created_at: str | None
    started_at: str | None
    finished_at: str | None


class RenderEnvelope(BaseModel):
    """A render wrapped in `render`."""

    render: RenderOut


class RenderList(BaseModel):
    """A page of the caller's renders, newest first; `next_before` is the `before` of the next page."""

    renders: list[RenderOut]
    next_before: int | None


class RenderDownloadOut(BaseModel):
    """A short-lived URL that downloads the video."""

    url: str
    expires_in: int


class DownloadQuery(BaseModel):
    """Query of a render's download: `redirect=1` answers 302 to the video instead of its URL as JSON."""

    model_config = ConfigDict(extra="forbid")

    redirect: Flag = False
