"""Database models; importing this package registers every table with the metadata."""

from .user import RevokedToken, User

__all__ = ["RevokedToken", "User"]
