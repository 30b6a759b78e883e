"""Database models; importing this package registers every table with the metadata.

Layer: base; may import log (tests/unit/test_layers.py).
"""

from .alert import AlertDelivery, AlertRule, SloMinute
from .billing import CreditAccount, CreditEntry, CreditPurchase, ProcessedStripeEvent, UnappliedPayment
from .error_event import ErrorCodeHour, ErrorCodeMinute, ErrorEvent, ErrorGroup, ErrorGroupHour, ErrorMinute
from .idempotency import IdempotencyRecord
from .job import Job, JobStep, JobWorker
from .media import Render, Upload
from .outbox import EmailOutbox, PendingSync
from .service_fault import ServiceFault
from .shared_override import SharedOverride
from .user import RevokedToken, User

__all__ = [
    "AlertDelivery",
    "AlertRule",
    "CreditAccount",
    "CreditEntry",
    "CreditPurchase",
    "EmailOutbox",
    "ErrorCodeHour",
    "ErrorCodeMinute",
    "ErrorEvent",
    "ErrorGroup",
    "ErrorGroupHour",
    "ErrorMinute",
    "IdempotencyRecord",
    "Job",
    "JobStep",
    "JobWorker",
    "PendingSync",
    "ProcessedStripeEvent",
    "Render",
    "RevokedToken",
    "ServiceFault",
    "SharedOverride",
    "SloMinute",
    "UnappliedPayment",
    "Upload",
    "User",
]
