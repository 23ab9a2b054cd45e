"""The trainer: InfoNCE losses, the Ray Train loop, retrieval metrics."""
