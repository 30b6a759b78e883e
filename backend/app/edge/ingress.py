"""Ingress: which client sent a request behind proxies, and the request-line and header limits.

`TRUSTED_PROXIES` (default 0) is the number of proxies in front of the app. With N > 0 werkzeug's
`ProxyFix` takes the client address and scheme from the last N `X-Forwarded-For`/`-Proto` hops, the
ones our own proxies appended; whatever a client put before them is ignored, so a client cannot pick
its own address. With 0 the headers are ignored and the socket's peer is the client.

The app answers over-long URLs (414) and over-large or too many headers (431) itself, in the JSON
envelope with a request id and a log line. gunicorn's own limits (gunicorn.conf.py) are set above
these so that the app's answer comes first; what gunicorn still refuses before the app sees it (a
request line over 8,190 bytes, a header line over 16,380, more than 200 headers, bytes that are not
valid HTTP such as a NUL in a header) is its plain 400/414/431 and is documented in the README.
"""

from __future__ import annotations

from collections.abc import Callable

from flask import Flask, request
from werkzeug.middleware.proxy_fix import ProxyFix

from ..errors import APIError

#: The app's own limits; gunicorn.conf.py sets gunicorn's a step above them.
MAX_URL_BYTES = 4096
MAX_HEADER_FIELD_BYTES = 8192
MAX_HEADER_FIELDS = 100


def install_proxy_fix(app: Flask) -> None:
    """Trust the last `TRUSTED_PROXIES` hops of `X-Forwarded-For` and `X-Forwarded-Proto` (none by default)."""
    hops = int(app.config.get("TRUSTED_PROXIES", 0) or 0)
    if hops > 0:
        app.wsgi_app = ProxyFix(app.wsgi_app, x_for=hops, x_proto=hops)  # type: ignore[method-assign]


def request_size_check(url_limit: int, field_limit: int, count_limit: int) -> Callable[[], None]:
    """The before-request hook refusing over-long URLs (414) and over-large or too many headers (431).

    Runs on every request, so it reads the environ directly with the limits bound once: about 1.5 µs.
    A header's size is its value's (repeated headers arrive joined, as one value); what gunicorn counts
    as one line per header is its own limit above ours.
    """

    def check_request_size() -> None:
        environ = request.environ
        # The URL as the client sent it (gunicorn: RAW_URI; werkzeug's server: REQUEST_URI), else rebuilt.
        raw_uri = environ.get("RAW_URI") or environ.get("REQUEST_URI")
        size = len(raw_uri) if raw_uri else len(environ.get("PATH_INFO", "")) + len(environ.get("QUERY_STRING", ""))
        if size > url_limit:
            raise APIError(
                f"The URL is longer than the {url_limit} bytes this server accepts.",
                code="REQUEST_URI_TOO_LONG",
                status_code=414,
                details={"limit_bytes": url_limit, "received_bytes": size},
            )
        count = 0
        for key in environ:
            if key[:5] == "HTTP_":
                count += 1
                if len(environ[key]) > field_limit:
                    raise APIError(
                        f"A request header is larger than the {field_limit} bytes this server accepts.",
                        code="REQUEST_HEADER_FIELDS_TOO_LARGE",
                        status_code=431,
                        details={"limit_bytes": field_limit, "header": key[5:].replace("_", "-")},
                    )
        if count > count_limit:
            raise APIError(
                f"The request has more than the {count_limit} headers this server accepts.",
                code="REQUEST_HEADER_FIELDS_TOO_LARGE",
                status_code=431,
                details={"limit_headers": count_limit, "received_headers": count},
            )

    return check_request_size


def init_ingress(app: Flask) -> None:
    """Install ProxyFix (when configured) and the URL and header limits, before every other check."""
    install_proxy_fix(app)
    cfg = app.config
    check = request_size_check(
        int(cfg.get("MAX_URL_BYTES", MAX_URL_BYTES)),
        int(cfg.get("MAX_HEADER_FIELD_BYTES", MAX_HEADER_FIELD_BYTES)),
        int(cfg.get("MAX_HEADER_FIELDS", MAX_HEADER_FIELDS)),
    )
    app.before_request(check)
