"""The web dashboard at ``/ui``: spend, traffic, deployment health, keys and teams.

``add_ui_routes(app, engine)`` mounts it; ``ui.enabled: false`` leaves it out. See
docs/dashboard.md.
"""

from gateway.ui.routes import add_ui_routes

__all__ = ["add_ui_routes"]
