"""Helpers for testing trioserve handlers and servers (being built)."""
