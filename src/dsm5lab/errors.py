"""Errors a user can fix. The CLI prints them as one line and exits with code 2."""

from __future__ import annotations


class UserError(Exception):
    """Bad input: a file, a column, a param. The message names it and what is allowed."""

    exit_code = 2
