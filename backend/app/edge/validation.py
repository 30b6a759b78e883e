"""Parse and validate JSON request bodies and query strings with pydantic, raising our errors.

Malformed JSON is a 400 `MALFORMED_JSON` (so is JSON nested deeper than `MAX_JSON_DEPTH`: `[` x 100,000
would otherwise exhaust the recursion limit of the parser), a non-JSON content type a 415, and field problems a 422
`VALIDATION_ERROR` whose `details.fields` maps each field path to its problem. A query string is checked
the same way (422 naming each bad parameter); a parameter given twice is refused, never half-read.
`StrictModel` is the base of the blueprints' request models (each blueprint's `schemas.py`); `Flag` is
the one boolean a query string may carry (1/true/yes or 0/false/no; anything else is a 422, never false).
"""

from __future__ import annotations

import json
from typing import Annotated, Any, TypeVar

import pydantic
from flask import request

from ..errors import MalformedJSONError, UnsupportedMediaTypeError, ValidationError

M = TypeVar("M", bound=pydantic.BaseModel)
Q = TypeVar("Q", bound=pydantic.BaseModel)

#: Deepest nesting of arrays and objects a request body may have (no endpoint needs more than a few).
MAX_JSON_DEPTH = 32


_TRUE = frozenset({"1", "true", "yes"})
_FALSE = frozenset({"", "0", "false", "no"})  # `?archived=` (empty) reads as not given, as it always did


def _flag(value: Any) -> Any:
    if isinstance(value, str):
        text = value.strip().lower()
        if text in _TRUE or text in _FALSE:
            return text in _TRUE
        raise ValueError("must be one of 1, true, yes, 0, false, no")
    return value


#: A query-string boolean: `?archived=true`, `?redirect=1`; `?archived=abc` is a 422 naming the parameter.
Flag = Annotated[bool, pydantic.BeforeValidator(_flag)]


class StrictModel(pydantic.BaseModel):
    """Rejects unknown fields so typos are reported, not ignored."""

    model_config = pydantic.ConfigDict(extra="forbid", str_strip_whitespace=True)


def deeper_than(data: Any, limit: int) -> bool:
    """Whether parsed JSON nests arrays/objects more than `limit` deep (iterative: no recursion)."""
    stack = [(data, 1)]
    while stack:
        value, depth = stack.pop()
        children = value.values() if isinstance(value, dict) else value if isinstance(value, list) else None
        if children is None:
            continue
        if depth > limit:
            return True
        stack.extend((child, depth + 1) for child in children if isinstance(child, (dict, list)))
    return False


def load_json(raw: bytes) -> Any:
    """Parse a request body; ValueError when it is not JSON or nests deeper than `MAX_JSON_DEPTH`."""
    try:
        data = json.loads(raw)
    except RecursionError as exc:  # the C parser's own depth guard, far above ours
        raise ValueError(f"JSON nested deeper than {MAX_JSON_DEPTH} levels") from exc
    # Fewer brackets than the limit cannot nest deeper: the walk runs only for bodies that might.
    if raw.count(b"[") + raw.count(b"{") > MAX_JSON_DEPTH and deeper_than(data, MAX_JSON_DEPTH):
        raise ValueError(f"JSON nested deeper than {MAX_JSON_DEPTH} levels")
    return data


def field_errors(exc: pydantic.ValidationError) -> dict[str, str]:
    """Map pydantic's errors to `{"field.path": "problem"}`, first problem per field."""
    fields: dict[str, str] = {}
    for err in exc.errors(include_url=False, include_input=False):
        path = ".".join(str(part) for part in err["loc"]) or "body"
        fields.setdefault(path, err["msg"])
    return fields


def parse_json(model: type[M]) -> M:
    """The request body as `model`, or the matching 400/415/422 error."""
    if not request.is_json:
        raise UnsupportedMediaTypeError(
            "Send the request body as JSON with Content-Type: application/json.",
            details={"expected": "application/json", "received": request.mimetype or None},
        )
    raw = request.get_data(cache=True)
    try:
        data = load_json(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        too_deep = not isinstance(exc, (json.JSONDecodeError, UnicodeDecodeError))
        raise MalformedJSONError(
            f"The request body nests arrays or objects deeper than {MAX_JSON_DEPTH} levels."
            if too_deep
            else "The request body is not valid JSON.",
            details={"max_depth": MAX_JSON_DEPTH} if too_deep else {"position": getattr(exc, "pos", None)},
        ) from exc
    try:
        return model.model_validate(data)
    except pydantic.ValidationError as exc:
        raise ValidationError("Some fields are invalid.", details={"fields": field_errors(exc)}) from exc


def parse_query(model: type[Q]) -> Q:
    """The query string as `model`, or a 422 VALIDATION_ERROR naming each bad parameter."""
    repeated = {name: "Give this parameter once." for name, values in request.args.lists() if len(values) > 1}
    if repeated:  # which of the values would count is a guess; refuse rather than pick one silently
        raise ValidationError("Some query parameters are invalid.", details={"fields": repeated})
    try:
        return model.model_validate(request.args.to_dict())
    except pydantic.ValidationError as exc:
        raise ValidationError("Some query parameters are invalid.", details={"fields": field_errors(exc)}) from exc
