"""URL converters: an `<int:...>` id that no id column can hold is a 404, never a database error."""

from __future__ import annotations

from typing import Any

from werkzeug.routing import IntegerConverter, Map

#: Largest value of a signed 64-bit column (PostgreSQL BIGINT); bigger ids make the driver raise.
MAX_BIGINT = 2**63 - 1
#: Largest value of a signed 32-bit column (PostgreSQL INTEGER), for tables with INTEGER ids.
MAX_INT = 2**31 - 1


class IdConverter(IntegerConverter):
    """`<int:name>` bounded by default to BIGINT; `<int(max=MAX_INT):name>` for INTEGER columns."""

    def __init__(self, map: Map, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("max", MAX_BIGINT)
        super().__init__(map, *args, **kwargs)
