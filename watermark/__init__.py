"""Keyed watermark embedded in the initial noise x_T of deterministic DDIM, detected by inversion."""
