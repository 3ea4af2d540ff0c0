"""The models and their weights: the DiT, the learned FREE drafter, files, model and class names."""
