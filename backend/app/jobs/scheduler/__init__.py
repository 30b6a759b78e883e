"""Periodic scheduling of job kinds.

Layer: jobs; may import log, base, errors, resilience, services (tests/unit/test_layers.py).
"""
