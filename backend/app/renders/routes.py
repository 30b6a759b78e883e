"""Views: upload audio, start a render, list uploads and renders, follow a render, download the video."""

from __future__ import annotations

import uuid
from typing import Any

from flask import current_app, redirect, request
from flask_jwt_extended import current_user
from sqlalchemy import select
from werkzeug.exceptions import RequestEntityTooLarge
from werkzeug.utils import secure_filename
from werkzeug.wrappers import Response

from ..auth.decorators import login_required
from ..edge.idempotency import HEADER_DOC as IDEMPOTENCY_HEADER_DOC
from ..edge.idempotency import idempotent
from ..edge.openapi import documented
from ..edge.rate_limits import rate_limited
from ..edge.routing import MAX_INT
from ..edge.validation import parse_json, parse_query
from ..errors import ConflictError, FileError, FileSizeError, NotFoundError
from ..extensions import db
from ..models.media import SUCCEEDED, Render, Upload
from ..request_id import get_request_id
from ..services import get_storage
from ..services.audio import inspect_audio
from ..services.rendering import RenderSpec, ffmpeg_binary
from . import bp
from .runner import queue_render
from .schemas import (
    PAGE_QUERY_DOC,
    DownloadQuery,
    PageQuery,
    RenderDownloadOut,
    RenderEnvelope,
    RenderList,
    RenderRequest,
    UploadEnvelope,
    UploadForm,
    UploadList,
)

# Room for the multipart boundary and part headers around the file itself.
MULTIPART_SLACK = 64 * 1024
MAX_FILENAME = 200


def _too_large() -> FileSizeError:
    limit_mb = int(current_app.config["MAX_UPLOAD_MB"])
    return FileSizeError(
        f"The file is larger than the {limit_mb} MB upload limit.",
        details={"max_mb": limit_mb, "max_bytes": limit_mb * 1024 * 1024},
    )


def _read_upload() -> tuple[bytes, str]:
    """The uploaded file's bytes and sanitised name, or FILE_MISSING / FILE_TOO_LARGE."""
    limit = int(current_app.config["MAX_UPLOAD_MB"]) * 1024 * 1024
    if request.content_length is not None and request.content_length > limit + MULTIPART_SLACK:
        raise _too_large()  # refuse before reading the body
    try:
        upload = request.files.get("file")
    except RequestEntityTooLarge as exc:  # a chunked body that outgrew MAX_CONTENT_LENGTH while parsing
        raise _too_large() from exc
    if upload is None:
        raise FileError(
            "Send the audio as multipart/form-data in the field `file`.",
            code="FILE_MISSING",
            details={"field": "file", "received": request.mimetype or None},
        )
    data = upload.stream.read(limit + 1)
    if len(data) > limit:
        raise _too_large()
    name = secure_filename(upload.filename or "")[-MAX_FILENAME:] or "upload"
    return data, name


@bp.post("/api/uploads")
@documented(
    "Upload an audio file (recognised by content); the response says where it was stored",
    tag="uploads",
    request=UploadForm,
    request_content="multipart/form-data",
    responses={201: UploadEnvelope},
    auth="user",
    errors=(400, 409, 413, 422, 503),
    headers=(IDEMPOTENCY_HEADER_DOC,),
)
@rate_limited("RATELIMIT_UPLOAD")
@login_required
@idempotent
def create_upload() -> tuple[dict[str, Any], int]:
    """Check the audio by content, store it, and say where it went (`location`, `degraded`)."""
    data, filename = _read_upload()
    cfg = current_app.config
    info = inspect_audio(
        data,
        ffmpeg=ffmpeg_binary(cfg),
        timeout=float(cfg["AUDIO_PROBE_TIMEOUT_SECONDS"]),
        work_dir=cfg.get("RENDER_WORK_DIR") or None,
    )
    key = f"uploads/{current_user.id}/{uuid.uuid4().hex}.{info.format.extension}"
    stored = get_storage().save(key, data, info.format.content_type)
    upload = Upload(
        user_id=current_user.id,
        filename=filename,
        format=info.format.name,
        content_type=info.format.content_type,
        size=stored.size,
        duration_seconds=info.duration_seconds,
        storage_key=stored.key,
        location=stored.location,
        degraded=stored.degraded,
    )
    db.session.add(upload)
    db.session.commit()
    return {"upload": upload.to_dict()}, 201


def _own(model: type[Upload] | type[Render], object_id: int, what: str) -> Any:
    """The caller's object, or 404 (someone else's is indistinguishable from a missing one)."""
    found = db.session.get(model, object_id)
    if found is None or found.user_id != current_user.id:
        raise NotFoundError(f"No such {what}.", details={"id": object_id})
    return found


@bp.post("/api/renders")
@documented(
    "Start a render of an upload (one render credit); 202 with the queued render",
    tag="renders",
    request=RenderRequest,
    responses={202: RenderEnvelope},
    auth="user",
    errors=(402, 404, 409, 422, 503),
    headers=(IDEMPOTENCY_HEADER_DOC,),
)
@rate_limited("RATELIMIT_RENDER")
@login_required
@idempotent
def create_render() -> tuple[dict[str, Any], int, dict[str, str]]:
    """Queue a render: checks resources, spends a credit and enqueues its job; a worker renders it."""
    body = parse_json(RenderRequest)
    upload = _own(Upload, body.upload_id, "upload")
    spec = RenderSpec.parse(body.preset, body.resolution, body.fps)
    render = queue_render(current_user.id, upload, spec, request_id=get_request_id())  # row, credit and job at once
    return {"render": render.to_dict()}, 202, {"Location": f"/api/renders/{render.id}"}


def _page(model: type[Upload] | type[Render]) -> tuple[list[Any], int | None]:
    """One page of the caller's rows, newest first, and the `before` of the next page (None at the end)."""
    query = parse_query(PageQuery)
    chosen = select(model).where(model.user_id == current_user.id)
    if query.before is not None:
        chosen = chosen.where(model.id < query.before)
    rows = db.session.scalars(chosen.order_by(model.id.desc()).limit(query.limit + 1)).all()
    page = list(rows[: query.limit])
    return page, page[-1].id if len(rows) > query.limit else None  # one row more says another page exists


@bp.get("/api/uploads")
@documented(
    "List your uploads, newest first, a page at a time",
    tag="uploads",
    responses={200: UploadList},
    auth="user",
    errors=(422,),
    query=PAGE_QUERY_DOC,
)
@login_required
def list_uploads() -> dict[str, Any]:
    """The caller's uploads, newest first; `next_before` pages on."""
    page, next_before = _page(Upload)
    return {"uploads": [row.to_dict() for row in page], "next_before": next_before}


@bp.get("/api/renders")
@documented(
    "List your renders, newest first, a page at a time",
    tag="renders",
    responses={200: RenderList},
    auth="user",
    errors=(422,),
    query=PAGE_QUERY_DOC,
)
@login_required
def list_renders() -> dict[str, Any]:
    """The caller's renders, newest first; `next_before` pages on."""
    page, next_before = _page(Render)
    return {"renders": [row.to_dict() for row in page], "next_before": next_before}


@bp.get(f"/api/renders/<int(max={MAX_INT}):render_id>")
@documented(
    "A render's status, progress and, when it failed, the error",
    tag="renders",
    responses={200: RenderEnvelope},
    auth="user",
    errors=(404,),
)
@login_required
def get_render(render_id: int) -> dict[str, Any]:
    """Status (queued, running, succeeded, failed), progress percent, the video or the error."""
    return {"render": _own(Render, render_id, "render").to_dict()}


@bp.get(f"/api/renders/<int(max={MAX_INT}):render_id>/download")
@documented(
    "A short-lived download URL for a finished render (302 to it with ?redirect=true)",
    tag="renders",
    responses={200: RenderDownloadOut, 302: None},
    auth="user",
    errors=(404, 409, 503),
    query=(("redirect", "boolean", "Answer 302 to the URL instead of JSON"),),
)
@login_required
def download_render(render_id: int) -> dict[str, Any] | Response:
    """The video's URL from storage (bucket signed URL or app-signed local URL); 409 until it succeeded."""
    query = parse_query(DownloadQuery)
    render = _own(Render, render_id, "render")
    if render.status != SUCCEEDED or not render.video_key:
        raise ConflictError(
            "The render has not succeeded; there is nothing to download.",
            details={"status": render.status, "progress": render.progress},
        )
    expires_in = int(current_app.config["RENDER_DOWNLOAD_URL_SECONDS"])
    url = get_storage().download_url(render.video_key, expires_in=expires_in)
    if query.redirect:
        return redirect(url, code=302)
    return {"url": url, "expires_in": expires_in}
