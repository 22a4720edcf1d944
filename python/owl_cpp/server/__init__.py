"""An OpenAI-compatible HTTP server over one loaded model (`owl-server`, `python -m owl_cpp.server`).
Needs the server extra: pip install ".[server]" (FastAPI + uvicorn)."""
from .app import create_app

__all__ = ["create_app"]
