"""Helpers shared across the core's subpackages (not public API)."""
