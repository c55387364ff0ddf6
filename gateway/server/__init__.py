"""The HTTP proxy: a FastAPI app over the Engine."""

from gateway.server.app import create_app

__all__ = ["create_app"]
