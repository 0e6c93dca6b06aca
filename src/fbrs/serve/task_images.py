"""The image of a Label Studio task, from whatever its URL names.

    /data/local-files/?d=PATH   a file served by Label Studio (LOCAL_FILES_SERVING_ENABLED): read from
                                `local_files_root` when given (the same LOCAL_FILES_DOCUMENT_ROOT), else
                                fetched from Label Studio with the API key
    /data/upload/..., /tasks/.. uploads and cloud-storage proxies: fetched from Label Studio with the key
    http(s)://...               fetched as is; the key is sent only to Label Studio's own host
    data:image/...;base64,...   decoded in place

Every fetch has a timeout and a size limit; the bytes go through `fbrs.images.load_image` (EXIF
orientation, the pixel limit checked from the header before decoding), so the mask fits the image as
Label Studio shows it.
"""

from __future__ import annotations

import base64
import binascii
import json
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from fbrs.errors import FbrsError, InvalidImageError
from fbrs.images import load_image

DEFAULT_MAX_BYTES = 64 * 1024 * 1024
DEFAULT_MAX_PIXELS = 64_000_000
LOCAL_FILES_PREFIX = "/data/local-files/"


class ImageFetchError(FbrsError):
    """The task's image cannot be fetched (unreachable, refused, too large, unknown kind of URL)."""


@dataclass
class LabelStudioConnection:
    """Where Label Studio is and how to sign in to it (both from `/setup` unless given on the command line).

    api_key: a legacy token ("Token KEY") or a personal access token (a JWT refresh token, exchanged at
    /api/token/refresh for short-lived access tokens, as label-studio-sdk does).
    """

    url: str | None = None
    api_key: str | None = None
    timeout: float = 20.0
    _access: tuple[str, float] | None = field(default=None, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def update(self, url: str | None, api_key: str | None) -> None:
        with self._lock:
            if url:
                self.url = url.rstrip("/")
            if api_key and api_key != self.api_key:
                self.api_key, self._access = api_key, None

    def authorization(self) -> str | None:
        if not self.api_key:
            return None
        if not _looks_like_jwt(self.api_key):
            return f"Token {self.api_key}"
        with self._lock:
            if self._access is None or self._access[1] < time.monotonic():
                self._access = (self._refresh_access_token(), time.monotonic() + 240)
            return f"Bearer {self._access[0]}"

    def _refresh_access_token(self) -> str:
        if not self.url:
            raise ImageFetchError("a personal access token needs the Label Studio URL (--label-studio-url)")
        request = urllib.request.Request(
            f"{self.url}/api/token/refresh",
            data=json.dumps({"refresh": self.api_key}).encode(),
            headers={"Content-Type": "application/json"},
            method="POST",
        )
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                return str(json.loads(response.read(1 << 16))["access"])
        except (urllib.error.URLError, OSError, ValueError, KeyError) as error:
            raise ImageFetchError(
                f"Label Studio refused the API key at {self.url}/api/token/refresh: {error}"
            ) from None


class TaskImageReader:
    """Reads task images: `read(url)` -> (H, W, 3) uint8 RGB."""

    def __init__(
        self,
        connection: LabelStudioConnection,
        local_files_root: str | Path | None = None,
        max_bytes: int = DEFAULT_MAX_BYTES,
        max_pixels: int = DEFAULT_MAX_PIXELS,
    ) -> None:
        self.connection = connection
        self.local_files_root = None if local_files_root is None else Path(local_files_root).resolve()
        self.max_bytes = max_bytes
        self.max_pixels = max_pixels

    def key(self, url: str) -> str:
        """The name under which the segmenter keeps the image warm: the absolute URL."""
        if url.startswith("/") and self.connection.url:
            return self.connection.url + url
        return url

    def read(self, url: str) -> np.ndarray:
        what = f"the task image {_shorten(url)}"
        return load_image(self._bytes(url), max_pixels=self.max_pixels, what=what)

    def _bytes(self, url: str) -> bytes:
        if not isinstance(url, str) or not url:
            raise ImageFetchError(f"the task's image must be a URL string, got {url!r}")
        if url.startswith("data:"):
            return _data_url(url)
        if url.startswith(LOCAL_FILES_PREFIX) and self.local_files_root is not None:
            return self._local_file(url)
        if url.startswith("/"):
            if not self.connection.url:
                raise ImageFetchError(
                    f"{_shorten(url)} is served by Label Studio, whose URL is unknown: connect the backend in "
                    "Label Studio (it sends its URL in /setup) or pass --label-studio-url"
                )
            return self._fetch(self.connection.url + url, signed=True)
        scheme = urllib.parse.urlsplit(url).scheme.lower()
        if scheme not in ("http", "https"):
            raise ImageFetchError(
                f"cannot fetch {_shorten(url)}: only http(s) URLs, Label Studio's /data/... paths and data: URLs "
                "are supported (serve cloud storage through Label Studio's proxy)"
            )
        return self._fetch(url, signed=self._is_label_studio(url))

    def _is_label_studio(self, url: str) -> bool:
        if not self.connection.url:
            return False
        ours, theirs = urllib.parse.urlsplit(self.connection.url), urllib.parse.urlsplit(url)
        return (ours.scheme, ours.netloc) == (theirs.scheme, theirs.netloc)

    def _local_file(self, url: str) -> bytes:
        query = urllib.parse.parse_qs(urllib.parse.urlsplit(url).query)
        relative = (query.get("d") or [""])[0]
        path = (self.local_files_root / relative).resolve()
        if not relative or not path.is_relative_to(self.local_files_root):
            raise ImageFetchError(f"{_shorten(url)} is not a file under the local files root {self.local_files_root}")
        if not path.is_file():
            raise ImageFetchError(f"{_shorten(url)}: no file {path}")
        if path.stat().st_size > self.max_bytes:
            raise ImageFetchError(f"{path} is larger than {self.max_bytes} bytes")
        return path.read_bytes()

    def _fetch(self, url: str, signed: bool) -> bytes:
        request = urllib.request.Request(url, headers={"User-Agent": "fbrs-label-studio-backend"})
        authorization = self.connection.authorization() if signed else None
        if authorization:
            # Unredirected: a redirect to another host must not carry the key along.
            request.add_unredirected_header("Authorization", authorization)
        try:
            with urllib.request.urlopen(request, timeout=self.connection.timeout) as response:
                declared = response.headers.get("Content-Length")
                if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
                    raise ImageFetchError(f"{_shorten(url)} is {declared} bytes; the limit is {self.max_bytes}")
                data = response.read(self.max_bytes + 1)
        except urllib.error.HTTPError as error:
            hint = " (is the backend's API key valid?)" if error.code in (401, 403) else ""
            raise ImageFetchError(f"fetching {_shorten(url)} failed: HTTP {error.code}{hint}") from None
        except (urllib.error.URLError, OSError) as error:
            raise ImageFetchError(f"fetching {_shorten(url)} failed: {getattr(error, 'reason', error)}") from None
        if len(data) > self.max_bytes:
            raise ImageFetchError(f"{_shorten(url)} is larger than {self.max_bytes} bytes")
        return data


def _data_url(url: str) -> bytes:
    header, _, payload = url.partition(",")
    if not header.endswith(";base64"):
        raise InvalidImageError("a data: URL image must be base64-encoded")
    try:
        return base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError):
        raise InvalidImageError("the data: URL is not valid base64") from None


def _looks_like_jwt(key: str) -> bool:
    return key.count(".") == 2 and all(part for part in key.split("."))


def _shorten(url: str, limit: int = 120) -> str:
    return url if len(url) <= limit else url[: limit - 3] + "..."
