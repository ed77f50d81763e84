"""Encoders (backbones), fusions and the model that composes them."""
