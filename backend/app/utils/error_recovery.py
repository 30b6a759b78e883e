"""The seed's module path for `with_error_recovery`; the decorator lives in `backend.app.resilience.recovery`."""

from ..resilience.recovery import *  # noqa: F403 (the seed's public API, re-exported whole)
from ..resilience.recovery import __all__ as __all__
