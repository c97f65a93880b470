"""Inference: `pipeline.py` (image in, image out, the whole path in one readable file) and the
maths of its stages: guidance, geometry, latent and VAE tiling, the VAE's attention, colour fixes,
memory and hardware rules, progress. Imports `model`, `files` and the shared bottom (errors,
options, version), never `cli` or `train`."""
