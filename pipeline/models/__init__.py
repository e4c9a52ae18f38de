"""Frozen encoders for features: a registry of names plus weight sources."""
