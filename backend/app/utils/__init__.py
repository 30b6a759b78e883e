"""The seed's path only: `backend.app.utils.error_recovery` re-exports `backend.app.resilience.recovery`.

The resilience layer itself lives in `backend/app/resilience/`.

Layer: resilience; may import log, base, errors (tests/unit/test_layers.py).
"""
