"""Diffusion maths shared by every layer: what a denoiser may predict (prediction.py) and the noise and
schedules that stay consistent across the scales of a layered model (multiscale.py). Only torch below."""
