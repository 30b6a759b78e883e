"""Periodic scheduling of job kinds."""
