"""Errors of the development stack."""

from __future__ import annotations


class StackError(RuntimeError):
    """A stack process could not be started, did not become healthy or failed."""
