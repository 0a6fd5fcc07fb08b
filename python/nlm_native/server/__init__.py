"""``nlm serve``: an OpenAI-compatible HTTP server over :class:`~nlm_native.LLM` (FastAPI + uvicorn).

:func:`create_app` builds the ASGI app (host it with uvicorn, hypercorn or Ray Serve); :func:`serve`
runs it. The HTTP layer talks to the model only through ``LLM``'s public methods.
"""

from .app import create_app
from .config import ServerConfig, ServerConfigError
from .run import serve

__all__ = ["ServerConfig", "ServerConfigError", "create_app", "serve"]
