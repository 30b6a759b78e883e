"""Accounts and JSON Web Tokens: register, login, refresh, logout, /api/me."""

from flask import Blueprint

bp = Blueprint("auth", __name__)

from . import routes  # noqa: E402,F401 - registers the views on bp
