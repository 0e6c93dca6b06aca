"""Live sessions, bounded by count and by memory, that cannot be lost.

Past either bound the least recently used session is evicted: it is saved first (a folder image's click
log and masks go to the annotation folder; an uploaded image's bytes and click log to a private spill
folder) and leaves a tombstone. The next request for its id rebuilds it from what was saved, replaying
the unfinished object's clicks, so a session that existed answers as before instead of 404; only the
redo stack is lost. A folder image has one session (one id) for the app's lifetime, whatever the number
of tabs or concurrent opens, so two of them can never overwrite each other's objects.

Locking: the store's own lock guards its dictionaries only (never held while saving or predicting).
A request pins the session it uses (`checkout`): a pinned session is never chosen for eviction, so
under load the bounds are exceeded by the requests in flight rather than a session being evicted
between two of its own steps. A session's lock is held while it is saved and marked `closed`; a request
that found it just then sees `closed` and checks it out again, which rebuilds it. `_revive_lock` makes
"find, else rebuild or create" atomic, one at a time. Eviction never waits for a busy session.
"""

from __future__ import annotations

import contextlib
import json
import logging
import shutil
import tempfile
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from fbrs.app.errors import SessionNotFoundError
from fbrs.app.export import ImageAnnotation, click_log_from_json, click_log_to_json
from fbrs.io_utils import write_bytes_atomic, write_text_atomic

if TYPE_CHECKING:
    from fbrs.app.sessions import AnnotationSession

LOGGER = logging.getLogger("fbrs.app")
MAX_UPLOAD_TOMBSTONES = 10_000


@dataclass(frozen=True)
class Tombstone:
    """What an evicted session left behind: enough to rebuild it under the same id."""

    session_id: str
    version: int
    image_name: str | None = None  # a folder image: the annotation folder has its click log


class SessionStore:
    """At most `max_sessions` live sessions and about `max_bytes` of their memory (None: no memory bound).

    persist(session) -> Tombstone | None saves an evicted session (None: it cannot be rebuilt, so it
    is gone); restore(tombstone) -> AnnotationSession rebuilds one; forget(tombstone) drops what
    persist saved for a session that is deleted or expires. Without them eviction simply drops.
    """

    def __init__(
        self,
        max_sessions: int = 32,
        max_bytes: int | None = None,
        persist: Callable[[AnnotationSession], Tombstone | None] | None = None,
        restore: Callable[[Tombstone], AnnotationSession] | None = None,
        forget: Callable[[Tombstone], None] | None = None,
    ) -> None:
        if max_sessions < 1:
            raise ValueError(f"max_sessions must be at least 1, got {max_sessions}")
        self.max_sessions = max_sessions
        self.max_bytes = max_bytes
        self._persist = persist
        self._restore = restore
        self._forget = forget
        self._sessions: OrderedDict[str, AnnotationSession] = OrderedDict()
        self._tombstones: OrderedDict[str, Tombstone] = OrderedDict()
        self._image_tombstones: dict[str, Tombstone] = {}
        self._evicting: set[str] = set()
        self._lock = threading.Lock()
        self._revive_lock = threading.RLock()
        self.evictions = 0
        self.restores = 0

    # ------------------------------------------------------------------------------------- lookups

    def add(self, session: AnnotationSession) -> AnnotationSession:
        """Make `session` live (most recently used), then evict what the bounds require."""
        with self._lock:
            self._add_locked(session)
        self.enforce()
        return session

    def _add_locked(self, session: AnnotationSession, pin: bool = False) -> None:
        session.pins += pin
        self._sessions[session.session_id] = session
        self._sessions.move_to_end(session.session_id)
        tombstone = self._tombstones.pop(session.session_id, None)
        if tombstone is not None and tombstone.image_name is not None:
            self._image_tombstones.pop(tombstone.image_name, None)

    def get(self, session_id: str) -> AnnotationSession:
        """The live session, or the evicted one rebuilt; SessionNotFoundError for an unknown id."""
        session = self._get(session_id, pin=False)
        self.enforce()
        return session

    def open_image(
        self, image_name: str, create: Callable[[], AnnotationSession] | None
    ) -> AnnotationSession:
        """The one session of a folder image: live, else rebuilt from its tombstone (same id), else
        `create()`; concurrent calls for one image get the same session."""
        session = self._open_image(image_name, create, pin=False)
        self.enforce()
        return session

    @contextlib.contextmanager
    def checkout(self, session_id: str) -> Iterator[AnnotationSession]:
        """`get`, with the session pinned until the block ends: a session some request is using is never
        evicted under it (the bounds may then be exceeded by the requests in flight, briefly)."""
        session = self._get(session_id, pin=True)
        try:
            yield session
        finally:
            self._unpin(session)

    @contextlib.contextmanager
    def checkout_image(
        self, image_name: str, create: Callable[[], AnnotationSession] | None
    ) -> Iterator[AnnotationSession]:
        """`open_image`, pinned like `checkout`."""
        session = self._open_image(image_name, create, pin=True)
        try:
            yield session
        finally:
            self._unpin(session)

    def _unpin(self, session: AnnotationSession) -> None:
        with self._lock:
            session.pins -= 1
        self.enforce()  # bounds that waited for this session to be idle

    def _get(self, session_id: str, pin: bool) -> AnnotationSession:
        with self._lock:
            session = self._sessions.get(session_id)
            if session is not None:
                self._sessions.move_to_end(session_id)
                session.pins += pin
                return session
            tombstone = self._tombstones.get(session_id)
        if tombstone is None:
            raise SessionNotFoundError(f"no session {session_id[:64]!r} (never created, or deleted); create a new one")
        if tombstone.image_name is not None:
            return self._open_image(tombstone.image_name, None, pin)
        with self._revive_lock:
            with self._lock:
                session = self._sessions.get(session_id)
                tombstone = self._tombstones.get(session_id)
                if session is not None:
                    self._sessions.move_to_end(session_id)
                    session.pins += pin
                    return session
            if tombstone is None:
                raise SessionNotFoundError(f"no session {session_id[:64]!r} (deleted meanwhile)")
            session = self._rebuild(tombstone)
            with self._lock:
                self._add_locked(session, pin)
        return session

    def _open_image(
        self, image_name: str, create: Callable[[], AnnotationSession] | None, pin: bool
    ) -> AnnotationSession:
        with self._revive_lock:
            with self._lock:
                session = self._find_image_locked(image_name)
                tombstone = self._image_tombstones.get(image_name)
                if session is not None:
                    session.pins += pin
                    return session
            if tombstone is not None:
                session = self._rebuild(tombstone)
            elif create is not None:
                session = create()
            else:
                raise SessionNotFoundError(f"the session of {image_name!r} is gone; open the image again")
            with self._lock:
                self._add_locked(session, pin)
        return session

    def _find_image_locked(self, image_name: str) -> AnnotationSession | None:
        for session in self._sessions.values():
            if session.image_name == image_name:
                self._sessions.move_to_end(session.session_id)
                return session
        return None

    def _rebuild(self, tombstone: Tombstone) -> AnnotationSession:
        if self._restore is None:
            raise SessionNotFoundError(f"session {tombstone.session_id!r} was evicted")
        try:
            session = self._restore(tombstone)
        except SessionNotFoundError:
            self._drop_tombstone(tombstone)
            raise
        session.version = max(session.version, tombstone.version + 1)  # the UI refetches its overlay
        self.restores += 1
        return session

    def find_image(self, image_name: str) -> AnnotationSession | None:
        with self._lock:
            return self._find_image_locked(image_name)

    def remove(self, session_id: str) -> AnnotationSession | None:
        """Forget a session: the live one is returned (the caller saves it if it wants), an evicted one's
        saved copy is forgotten. SessionNotFoundError for an unknown id."""
        with self._lock:
            session = self._sessions.pop(session_id, None)
            tombstone = self._tombstones.get(session_id)
        if tombstone is not None:
            self._drop_tombstone(tombstone)
        if session is None and tombstone is None:
            raise SessionNotFoundError(f"no session {session_id[:64]!r}")
        return session

    def _drop_tombstone(self, tombstone: Tombstone) -> None:
        with self._lock:
            self._tombstones.pop(tombstone.session_id, None)
            if tombstone.image_name is not None and self._image_tombstones.get(tombstone.image_name) is tombstone:
                del self._image_tombstones[tombstone.image_name]
        if self._forget is not None:
            self._forget(tombstone)

    # -------------------------------------------------------------------------------------- eviction

    def memory_bytes(self) -> int:
        with self._lock:
            return sum(session.memory_bytes() for session in self._sessions.values())

    def _over_bounds_locked(self) -> list[AnnotationSession]:
        """The sessions that may be evicted now, least recently used first; empty while both bounds hold.
        The most recently used session always stays, however large, and so do pinned ones (in use)."""
        live = [session for key, session in self._sessions.items() if key not in self._evicting]
        if len(live) <= 1:
            return []
        over = len(live) > self.max_sessions or (
            self.max_bytes is not None and sum(session.memory_bytes() for session in live) > self.max_bytes
        )
        return [session for session in live[:-1] if session.pins == 0] if over else []

    def enforce(self) -> None:
        """Evict least recently used idle sessions until both bounds hold (called after adds and requests).
        Never waits: a session in use (pinned, or its lock held) is passed over, and while every
        candidate is in use the bounds are exceeded by those requests until they end."""
        while True:
            with self._lock:
                victim = next((session for session in self._over_bounds_locked()
                               if session.lock.acquire(blocking=False)), None)
                if victim is None:
                    return
                self._evicting.add(victim.session_id)
            try:
                evicted = self._evict_locked(victim)
            finally:
                victim.lock.release()
            if not evicted:
                return

    def _evict_locked(self, victim: AnnotationSession) -> bool:
        """Save `victim` (its lock held), leave a tombstone, mark it closed. False when saving failed."""
        try:
            tombstone = self._persist(victim) if self._persist is not None else None
        except Exception:  # noqa: BLE001 - a session that cannot be saved stays live: better RAM than lost work
            LOGGER.exception("fbrs app: could not save session %s for eviction; keeping it", victim.session_id)
            with self._lock:
                self._evicting.discard(victim.session_id)
                if victim.session_id in self._sessions:
                    self._sessions.move_to_end(victim.session_id)
            return False
        with self._lock:
            self._evicting.discard(victim.session_id)
            self._sessions.pop(victim.session_id, None)
            if tombstone is not None:
                self._tombstones[victim.session_id] = tombstone
                if tombstone.image_name is not None:
                    self._image_tombstones[tombstone.image_name] = tombstone
            uploads = [item for item in self._tombstones.values() if item.image_name is None]
            expired = uploads[: max(0, len(uploads) - MAX_UPLOAD_TOMBSTONES)]
            self.evictions += 1
        victim.closed = True
        for old in expired:
            self._drop_tombstone(old)
        return True

    def __len__(self) -> int:
        return len(self._sessions)

    def sessions(self) -> list[AnnotationSession]:
        with self._lock:
            return list(self._sessions.values())


class SpillFolder:
    """Evicted uploaded sessions on disk: the upload's bytes and its click log, in a private temporary
    folder (0700, removed on close). At most `max_bytes`: the oldest entries go first (their sessions
    then answer 404, "expired")."""

    def __init__(self, max_bytes: int = 2 * 2**30) -> None:
        self.max_bytes = max_bytes
        self._folder: Path | None = None
        self._sizes: OrderedDict[str, int] = OrderedDict()
        self._lock = threading.Lock()

    def _path(self, session_id: str, suffix: str) -> Path:
        if self._folder is None:
            self._folder = Path(tempfile.mkdtemp(prefix="fbrs-app-sessions-"))
        if not session_id.isalnum():
            raise ValueError(f"session id {session_id!r} is not alphanumeric")
        return self._folder / f"{session_id}{suffix}"

    def write(self, session_id: str, image_bytes: bytes, annotation: ImageAnnotation) -> None:
        with self._lock:
            log = json.dumps(click_log_to_json(annotation))
            write_bytes_atomic(self._path(session_id, ".image"), image_bytes)
            write_text_atomic(self._path(session_id, ".json"), log)
            self._sizes[session_id] = len(image_bytes) + len(log)
            while sum(self._sizes.values()) > self.max_bytes and len(self._sizes) > 1:
                self._discard_locked(next(iter(self._sizes)))

    def read(self, session_id: str) -> tuple[bytes, ImageAnnotation]:
        with self._lock:
            if session_id not in self._sizes:
                raise SessionNotFoundError(
                    f"session {session_id!r} was evicted and its saved copy has expired; upload the image again"
                )
            image_bytes = self._path(session_id, ".image").read_bytes()
            record = json.loads(self._path(session_id, ".json").read_text(encoding="utf-8"))
        return image_bytes, click_log_from_json(record, source=f"saved session {session_id}")

    def discard(self, session_id: str) -> None:
        with self._lock:
            self._discard_locked(session_id)

    def _discard_locked(self, session_id: str) -> None:
        if self._sizes.pop(session_id, None) is not None:
            for suffix in (".image", ".json"):
                self._path(session_id, suffix).unlink(missing_ok=True)

    def close(self) -> None:
        with self._lock:
            if self._folder is not None:
                shutil.rmtree(self._folder, ignore_errors=True)
            self._folder = None
            self._sizes.clear()
