"""The HTTP API's routes, one APIRouter per resource; `fbrs.app.server.create_app` includes `ROUTERS`.

pages: the web UI and the API docs page; info: modes, defaults, limits; images: the annotation folder;
sessions: a session's life, settings and display images; objects: clicks, undo / redo, labels and the
objects of a session; export: masks and saved files; predict: stateless image + clicks -> mask.
Every route reaches the app's state through `fbrs.app.context.Context`.
"""

from __future__ import annotations

from fbrs.app.routes import export, images, info, objects, pages, predict, sessions

ROUTERS = (pages.router, info.router, images.router, sessions.router, objects.router, export.router,
           predict.router)

__all__ = ["ROUTERS"]
