"""Database models; importing this package registers every table with the metadata."""

from .error_event import ErrorCodeMinute, ErrorEvent, ErrorGroup, ErrorGroupHour, ErrorMinute
from .user import RevokedToken, User

__all__ = [
    "ErrorCodeMinute",
    "ErrorEvent",
    "ErrorGroup",
    "ErrorGroupHour",
    "ErrorMinute",
    "RevokedToken",
    "User",
]
