"""Serve entry point: `serve run serve_app:app [model_dir=DIR] [max_batch_size=N ...]` (see sam/serve.py)."""

from sam.serve import build_app as app  # an application builder: Serve calls it with the key=value args

__all__ = ["app"]
