"""Training the DiT and the drafter (torchrun-ready, resumable) on the procedural data."""
