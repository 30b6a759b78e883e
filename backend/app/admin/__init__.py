"""Admin blueprints: the monitoring API under /admin/api/monitoring.

Layer: blueprints; may import every layer but the factory (tests/unit/test_layers.py).
"""
