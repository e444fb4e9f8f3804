"""Helpers shared by the test suites: waiting for conditions, test databases."""

from tests.support.eventually import assert_eventually

__all__ = ["assert_eventually"]
