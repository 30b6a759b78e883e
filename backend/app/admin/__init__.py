"""Admin blueprints: the monitoring API under /admin/api/monitoring."""
