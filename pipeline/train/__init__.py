"""Fusion models and their training (plain torch, Ray Train on top)."""
