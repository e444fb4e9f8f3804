"""The executor: calls models for planned runs and streams their output."""
