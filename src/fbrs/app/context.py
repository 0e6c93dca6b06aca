"""The app's shared state, one typed object: what every route reaches through `Depends(app_context)`.

`create_app` builds one `AppContext` per app and keeps it in `app.state.context`; routes declare a
parameter `context: Context` and FastAPI hands them that object. It holds the engine (the door into the
library), the annotation folder (None: API only), the limits, the labels and the session store, and
knows how a session is saved, evicted, rebuilt and used under its lock.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Annotated, TypeVar

from fastapi import Depends, Request

from fbrs.app.engine import PredictionEngine, PredictorSettings
from fbrs.app.errors import SessionNotFoundError, UnknownImageError
from fbrs.app.labels import LabelSet
from fbrs.app.payloads import decode_image_upload
from fbrs.app.prefetch import EmbeddingPrefetcher
from fbrs.app.project import AnnotationProject, AppLimits
from fbrs.app.sessions import AnnotationSession
from fbrs.app.store import SessionStore, SpillFolder, Tombstone
from fbrs.errors import ConfigError

__all__ = ["AppContext", "Context", "app_context"]

T = TypeVar("T")


@dataclass
class AppContext:
    """Everything the routes share. `project` None: the app serves the API only (no folder images).

    `store` and `spill` are built from the rest: sessions evicted from the store are saved to the folder
    (folder images) or to the private spill folder (uploads), and rebuilt from there under the same id.
    """

    engine: PredictionEngine
    project: AnnotationProject | None
    limits: AppLimits
    labels: LabelSet
    store: SessionStore = field(init=False)
    spill: SpillFolder = field(init=False)
    prefetcher: EmbeddingPrefetcher | None = field(init=False)  # None without a folder

    def __post_init__(self) -> None:
        self.spill = SpillFolder()
        self.store = SessionStore(
            self.limits.max_sessions, self.limits.max_session_bytes, persist=self._persist,
            restore=self._restore, forget=lambda tombstone: self.spill.discard(tombstone.session_id),
        )
        self.prefetcher = None if self.project is None else EmbeddingPrefetcher(self.engine, self.project.load_image)

    # ---------------------------------------------------------------------------------- folder

    def folder(self) -> AnnotationProject:
        """The annotation folder; UnknownImageError (404) when the app was started without one."""
        if self.project is None:
            raise UnknownImageError("the app was started without an images folder")
        return self.project

    def save_to_folder(self, session: AnnotationSession) -> None:
        """Write a folder image's masks and click log (uploaded sessions have no files)."""
        if self.project is not None and session.image_name is not None:
            self.project.save(session.to_annotation())

    def open_folder_session(self, image_name: str, session_id: str | None = None) -> AnnotationSession:
        """A session of a folder image, resumed from its saved annotation."""
        annotations = self.folder()
        return AnnotationSession(annotations.load_image(image_name), self.engine, image_name=image_name,
                                 saved=annotations.saved_annotation(image_name), session_id=session_id,
                                 labels=self.labels)

    def prefetch_next(self, image_name: str, settings: PredictorSettings) -> None:
        """Encode the folder image after `image_name` in the background (SAM family; see fbrs.app.prefetch)."""
        names = [] if self.project is None else self.project.image_names
        if self.prefetcher is not None and image_name in names:
            following = names.index(image_name) + 1
            if following < len(names):
                self.prefetcher.schedule(names[following], settings)

    # ------------------------------------------------------------------------------- sessions

    def use(self, session_id: str, action: Callable[[AnnotationSession], T]) -> T:
        """Run `action` on the live session (rebuilt if it was evicted), pinned and under its lock; the
        bounds are enforced again when it ends (the session may have grown)."""
        for _ in range(3):
            with self.store.checkout(session_id) as session, session.lock:  # pinned: not evicted while in use
                if not session.closed:  # else its eviction was finishing: the next checkout rebuilds it
                    return action(session)
        raise SessionNotFoundError(f"session {session_id[:64]!r} was closed meanwhile")

    def parse_settings(
        self, mode: str | None, zoom_in: bool | None, prob_threshold: float | None, flip: bool | None
    ) -> PredictorSettings:
        """Form fields (None = the engine's default) -> checked settings; ConfigError / ModeUnavailableError."""
        values = {key: value for key, value in
                  {"mode": mode, "zoom_in": zoom_in, "prob_threshold": prob_threshold, "flip": flip}.items()
                  if value is not None}
        try:
            settings = PredictorSettings.from_dict(values, base=self.engine.default_settings())
        except (TypeError, ValueError) as error:
            raise ConfigError(str(error)) from None
        self.engine.check_mode(settings.mode)
        return settings

    def close(self) -> None:
        """At shutdown: unfinished clicks of folder images survive a restart through their click logs."""
        if self.prefetcher is not None:
            self.prefetcher.close()
        for session in self.store.sessions():
            if session.image_name is not None and self.project is not None and session.version > 0:
                self.save_to_folder(session)
        self.spill.close()

    def _persist(self, session: AnnotationSession) -> Tombstone | None:
        if self.project is not None and session.image_name is not None:
            self.save_to_folder(session)
            return Tombstone(session.session_id, session.version, image_name=session.image_name)
        if session.source is None:
            return None
        self.spill.write(session.session_id, session.source, session.to_annotation())
        return Tombstone(session.session_id, session.version)

    def _restore(self, tombstone: Tombstone) -> AnnotationSession:
        if tombstone.image_name is not None:
            return self.open_folder_session(tombstone.image_name, tombstone.session_id)
        data, saved = self.spill.read(tombstone.session_id)
        session = AnnotationSession(decode_image_upload(data, self.limits), self.engine, saved=saved,
                                    session_id=tombstone.session_id, source=data, labels=self.labels)
        self.spill.discard(tombstone.session_id)
        return session


async def app_context(request: Request) -> AppContext:
    """The dependency: the context of the app serving `request` (async: no thread-pool hop for a lookup)."""
    return request.app.state.context


Context = Annotated[AppContext, Depends(app_context)]
