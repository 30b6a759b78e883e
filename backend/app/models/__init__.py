"""Database models; importing this package registers every table with the metadata."""

from .error_event import ErrorCodeMinute, ErrorEvent, ErrorGroup, ErrorGroupHour, ErrorMinute
from .job import Job, JobStep, JobWorker
from .user import RevokedToken, User

__all__ = [
    "ErrorCodeMinute",
    "ErrorEvent",
    "ErrorGroup",
    "ErrorGroupHour",
    "ErrorMinute",
    "Job",
    "JobStep",
    "JobWorker",
    "RevokedToken",
    "User",
]
