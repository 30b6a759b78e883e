"""The seed's path only: `backend.app.utils.error_recovery` re-exports `backend.app.resilience.recovery`.

The resilience layer itself lives in `backend/app/resilience/`.
"""
