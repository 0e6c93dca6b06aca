"""The objects of a session: clicks on the current one, undo / redo / reset, finishing it, labels, and
deleting a finished one. Changes to finished objects are saved to the folder at once (folder images)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter
from fastapi import Path as PathParameter

from fbrs.app.context import Context
from fbrs.app.sessions import AnnotationSession
from fbrs.app.validation import MAX_OBJECT_ID, ClickRequest, LabelRequest

router = APIRouter()

ObjectId = Annotated[int, PathParameter(ge=1, le=MAX_OBJECT_ID)]


@router.post("/api/sessions/{session_id}/clicks", summary="Add a click to the current object")
def add_click(session_id: str, click: ClickRequest, context: Context) -> dict[str, Any]:
    def action(session: AnnotationSession) -> dict[str, Any]:
        session.add_click(click.to_click(), label=click.label)
        return session.state()

    if click.label is not None:
        context.labels.require(click.label)  # 400 before any work
    return context.use(session_id, action)


@router.put("/api/sessions/{session_id}/label", summary="Label the current object (and the next ones)")
def set_label(session_id: str, request: LabelRequest, context: Context) -> dict[str, Any]:
    context.labels.require(request.label)
    return context.use(session_id, lambda session: (session.set_label(request.label), session.state())[1])


@router.put("/api/sessions/{session_id}/objects/{object_id}/label", summary="Change a finished object's label")
def set_object_label(session_id: str, object_id: ObjectId, request: LabelRequest, context: Context) -> dict[str, Any]:
    context.labels.require(request.label)

    def action(session: AnnotationSession) -> dict[str, Any]:
        session.set_object_label(object_id, request.label)
        context.save_to_folder(session)
        return session.state()

    return context.use(session_id, action)


@router.post("/api/sessions/{session_id}/undo", summary="Undo the current object's last click")
def undo(session_id: str, context: Context) -> dict[str, Any]:
    return context.use(session_id, lambda session: (session.undo(), session.state())[1])


@router.post("/api/sessions/{session_id}/redo", summary="Redo the last undone click")
def redo(session_id: str, context: Context) -> dict[str, Any]:
    return context.use(session_id, lambda session: (session.redo(), session.state())[1])


@router.post("/api/sessions/{session_id}/reset", summary="Drop the current object's clicks")
def reset(session_id: str, context: Context) -> dict[str, Any]:
    return context.use(session_id, lambda session: (session.reset_object(), session.state())[1])


@router.post("/api/sessions/{session_id}/finish", summary="Finish the current object, start the next")
def finish(session_id: str, context: Context) -> dict[str, Any]:
    def action(session: AnnotationSession) -> dict[str, Any]:
        object_id = session.finish_object()
        context.save_to_folder(session)
        return {**session.state(), "finished_object_id": object_id}

    return context.use(session_id, action)


@router.delete("/api/sessions/{session_id}/objects/{object_id}", summary="Delete a finished object")
def delete_object(session_id: str, object_id: ObjectId, context: Context) -> dict[str, Any]:
    def action(session: AnnotationSession) -> dict[str, Any]:
        session.delete_object(object_id)
        context.save_to_folder(session)
        return session.state()

    return context.use(session_id, action)
