"""GET /api/info: what the UI and clients need to know first (modes, defaults, labels, limits, folder)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from fbrs.app.context import Context
from fbrs.app.validation import MAX_CLICKS_PER_OBJECT

router = APIRouter()


@router.get("/api/info", summary="Modes, defaults, limits, model and folder")
def info(context: Context) -> dict[str, Any]:
    engine, limits, store, project = context.engine, context.limits, context.store, context.project
    return {
        "modes": engine.modes(),
        "default_settings": engine.default_settings().to_dict(),
        "default_note": engine.default_note,  # why the app's preferred default mode is not the default
        "labels": context.labels.to_list(),
        "model": engine.model_name,
        "backend": engine.backend,
        "limits": {
            "max_upload_bytes": limits.max_upload_bytes,
            "max_image_pixels": limits.max_image_pixels,
            "max_sessions": limits.max_sessions,
            "max_session_bytes": limits.max_session_bytes,
            "max_clicks_per_object": MAX_CLICKS_PER_OBJECT,
            "display_max_side": limits.display_max_side,
        },
        "latency": engine.latency.summary(),  # {mode: {"prepare" | "click": {"count", "median_ms", ...}}}
        "sessions": {"live": len(store), "memory_bytes": store.memory_bytes(), "evictions": store.evictions,
                     "restores": store.restores},
        "folder": None if project is None else {
            "images_dir": str(project.images_dir), "out_dir": str(project.out_dir),
            "skipped": project.skipped_images(),
        },
    }
