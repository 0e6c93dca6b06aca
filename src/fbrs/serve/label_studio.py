"""A Label Studio ML backend: the protocol of `label-studio-ml` backends, as Label Studio 1.23 speaks it.

    GET  /health, /     {"status": "UP", "model_class": "fbrs", "model_version": ...}
    POST /setup         {project, schema, hostname, access_token, ...} -> {"model_version": ...}
    POST /predict       {tasks, label_config, params: {context: {result: [...]}}} -> {"results": [...], ...}
    GET  /versions      {"versions": [model_version]}

Label Studio's frontend, with a KeyPointLabels smart="true" tool and "auto-annotation" on, sends every
click of the object (`POST /api/ml/{id}/interactive-annotating`); Label Studio forwards them to /predict as
`params.context.result`: `keypointlabels` regions with x, y in percent of original_width / original_height
and `is_positive`, and optionally a `rectanglelabels` box. The answer is one brush region per task
(`brushlabels`, the mask in Label Studio's own RLE) whose first entry Label Studio shows as the suggestion.
A request without a context (plain pre-annotation) answers no results: fbrs needs clicks.
"""

from __future__ import annotations

import functools
import json
import math
import secrets
import xml.etree.ElementTree as ElementTree
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from starlette.requests import Request  # module level: FastAPI resolves the routes' annotations here

from fbrs.errors import FbrsError, InvalidClickError
from fbrs.images import ImageTooLargeError
from fbrs.inference.clicks import Click
from fbrs.serve.brush_rle import mask_to_rle
from fbrs.serve.segmenter import WarmSegmenter
from fbrs.serve.task_images import ImageFetchError, TaskImageReader

MAX_REQUEST_BYTES = 16 * 1024 * 1024
UNDEFINED_KEY = "$undefined$"
MAX_LABEL_CONFIG_CHARS = 1_000_000


class LabelStudioRequestError(FbrsError, ValueError):
    """A request that does not follow the ML backend protocol (a 400 with this message)."""


@dataclass(frozen=True)
class BrushTarget:
    """Where the mask goes: the BrushLabels control (from_name) on the Image object (to_name)."""

    from_name: str
    to_name: str
    image_key: str  # the task data field of the image ("image" for value="$image")
    labels: tuple[str, ...]  # the BrushLabels' Label values


def model_version(mode: str) -> str:
    from fbrs import __version__

    return f"fbrs-{__version__}-{mode}"


@functools.lru_cache(maxsize=32)
def brush_targets(label_config: str) -> tuple[BrushTarget, ...]:
    """The BrushLabels controls of a labelling config whose toName is an Image (in config order)."""
    if len(label_config) > MAX_LABEL_CONFIG_CHARS:
        raise LabelStudioRequestError("the labelling config is too long")
    try:
        root = ElementTree.fromstring(label_config)
    except ElementTree.ParseError as error:
        raise LabelStudioRequestError(f"the labelling config is not valid XML: {error}") from None
    images = {
        element.get("name"): (element.get("value") or "").lstrip("$")
        for element in root.iter()
        if element.tag.lower() == "image" and element.get("name")
    }
    targets = []
    for element in root.iter():
        if element.tag.lower() != "brushlabels":
            continue
        to_name = (element.get("toName") or "").split(",")[0]
        if element.get("name") and to_name in images and images[to_name]:
            labels = tuple(label.get("value") for label in element if label.get("value"))
            targets.append(BrushTarget(element.get("name"), to_name, images[to_name], labels))
    return tuple(targets)


@dataclass(frozen=True)
class TaskClicks:
    to_name: str
    clicks: tuple[Click, ...]
    box: tuple[float, float, float, float] | None  # (rmin, rmax, cmin, cmax) pixels
    label: str | None  # the keypoint's (or box's) label, if any


def parse_context(results: Any, image_size: dict[str, tuple[int, int]]) -> list[TaskClicks]:
    """Label Studio's `context.result` -> clicks per Image object, (y, x) in pixels of the image as loaded.

    image_size: to_name -> (height, width) of the image we segment. Percent coordinates are converted
    with it (Label Studio measures them on the image as shown, EXIF orientation applied, as we load it).
    """
    if not isinstance(results, list):
        raise LabelStudioRequestError("context.result must be a list of regions")
    by_image: dict[str, dict[str, Any]] = {}
    for region in results:
        if not isinstance(region, dict):
            raise LabelStudioRequestError("each context.result entry must be an object")
        kind = region.get("type")
        if kind not in ("keypointlabels", "rectanglelabels"):
            continue
        to_name = region.get("to_name")
        if to_name not in image_size:
            continue
        height, width = image_size[to_name]
        value = region.get("value")
        if not isinstance(value, dict):
            raise LabelStudioRequestError(f"a {kind} region has no value object")
        entry = by_image.setdefault(to_name, {"clicks": [], "box": None, "label": None})
        labels = value.get(kind) or value.get("labels") or []
        if isinstance(labels, list) and labels and isinstance(labels[0], str) and entry["label"] is None:
            entry["label"] = labels[0]
        x, y = _percent(value, "x"), _percent(value, "y")
        if kind == "keypointlabels":
            positive = region.get("is_positive", True)
            if not isinstance(positive, bool):
                raise LabelStudioRequestError(f"is_positive must be true or false, got {positive!r}")
            # Percent of the size -> pixels; 100% is the far edge, the last pixel's far side.
            entry["clicks"].append(Click(min(y * height / 100, height - 1), min(x * width / 100, width - 1), positive))
        else:
            if region.get("value", {}).get("rotation"):
                raise LabelStudioRequestError("rotated rectangles are not supported as boxes")
            box_width, box_height = _percent(value, "width"), _percent(value, "height")
            entry["box"] = (
                y * height / 100,
                min((y + box_height) * height / 100, height - 1),
                x * width / 100,
                min((x + box_width) * width / 100, width - 1),
            )
    return [
        TaskClicks(name, tuple(entry["clicks"]), entry["box"], entry["label"])
        for name, entry in by_image.items()
        if entry["clicks"] or entry["box"] is not None
    ]


def _percent(value: dict[str, Any], key: str) -> float:
    number = value.get(key)
    if isinstance(number, bool) or not isinstance(number, (int, float)) or not math.isfinite(number):
        raise InvalidClickError(f"value.{key} must be a finite number (percent), got {number!r}")
    if not 0 <= number <= 100:
        raise InvalidClickError(f"value.{key} = {number} is outside the image (0-100 percent)")
    return float(number)


class LabelStudioBackend:
    """The backend's state: the warm segmenter, where Label Studio is, and how to read task images."""

    def __init__(self, segmenter: WarmSegmenter, images: TaskImageReader, keep_connection: bool = False) -> None:
        self.segmenter = segmenter
        self.images = images
        self.keep_connection = keep_connection  # URL/key given on the command line win over /setup's
        self.version = model_version(segmenter.mode)

    def setup(self, body: dict[str, Any]) -> dict[str, Any]:
        if not self.keep_connection:
            hostname, token = body.get("hostname"), body.get("access_token")
            self.images.connection.update(
                hostname if isinstance(hostname, str) else None, token if isinstance(token, str) else None
            )
        return {"model_version": self.version}

    def predict(self, body: dict[str, Any]) -> dict[str, Any]:
        tasks = body.get("tasks")
        if not isinstance(tasks, list) or not all(isinstance(task, dict) for task in tasks):
            raise LabelStudioRequestError("tasks must be a list of task objects")
        params = body.get("params") or {}
        context = params.get("context") if isinstance(params, dict) else None
        if not context or not isinstance(context, dict) or not context.get("result"):
            return {"results": [], "model_version": self.version}
        label_config = body.get("label_config")
        if not isinstance(label_config, str):
            raise LabelStudioRequestError("label_config (the project's labelling config) is missing")
        targets = brush_targets(label_config)
        if not targets:
            raise LabelStudioRequestError(
                "the labelling config has no BrushLabels on an Image: add <BrushLabels name=... toName=IMAGE>"
            )
        return {
            "results": [self._predict_task(task, context["result"], targets) for task in tasks],
            "model_version": self.version,
        }

    def _predict_task(self, task: dict[str, Any], regions: Any, targets: Iterable[BrushTarget]) -> dict[str, Any]:
        data = task.get("data")
        if not isinstance(data, dict):
            raise LabelStudioRequestError("a task has no data object")
        if UNDEFINED_KEY in data and len(data) == 1:  # a file imported alone: Label Studio's "$undefined$" key
            data = {target.image_key: data[UNDEFINED_KEY] for target in targets}
        targets = {target.to_name: target for target in targets if isinstance(data.get(target.image_key), str)}
        if not targets:
            raise LabelStudioRequestError("the task's data has no image URL for the BrushLabels' Image")
        # Sizes are known only after loading, and only images that were clicked on are loaded.
        clicked = {
            region.get("to_name") for region in regions if isinstance(region, dict)
        } if isinstance(regions, list) else set()
        sizes = {}
        for to_name in clicked & set(targets):
            url = data[targets[to_name].image_key]
            sizes[to_name] = self._image_size(url)
        result, scores = [], []
        for request in parse_context(regions, sizes):
            target = targets[request.to_name]
            url = data[target.image_key]
            segmentation = self.segmenter.segment(
                self.images.key(url), functools.partial(self.images.read, url), request.clicks, request.box
            )
            height, width = segmentation.mask.shape
            label = request.label if request.label in target.labels else (target.labels[0] if target.labels else None)
            result.append({
                "id": secrets.token_hex(5),
                "type": "brushlabels",
                "from_name": target.from_name,
                "to_name": target.to_name,
                "original_width": width,
                "original_height": height,
                "image_rotation": 0,
                "value": {"format": "rle", "rle": mask_to_rle(segmentation.mask),
                          "brushlabels": [label] if label else []},
                "score": segmentation.score,
                "readonly": False,
            })
            scores.append(segmentation.score)
        return {"result": result, "model_version": self.version, "score": min(scores) if scores else 0.0}

    def _image_size(self, url: str) -> tuple[int, int]:
        """(height, width) of the task image, which this loads into the segmenter's cache (one read per image)."""
        return self.segmenter.image_size(self.images.key(url), functools.partial(self.images.read, url))


def create_label_studio_app(backend: LabelStudioBackend, allowed_hosts: Iterable[str] = ("*",),
                            basic_auth: tuple[str, str] | None = None):
    """The FastAPI app. allowed_hosts: Host names accepted ("*": any; see fbrs.app.guards.HostGuard);
    basic_auth: (user, password) that Label Studio sends (its ML backend "Basic auth" fields), or None."""
    import base64

    from fastapi import FastAPI
    from fastapi.responses import JSONResponse
    from starlette.concurrency import run_in_threadpool

    from fbrs.app.guards import BodySizeLimit, HostGuard

    app = FastAPI(title="fbrs Label Studio ML backend", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.backend = backend

    @app.middleware("http")
    async def check_basic_auth(request: Request, call_next):
        if basic_auth is not None:
            expected = "Basic " + base64.b64encode(f"{basic_auth[0]}:{basic_auth[1]}".encode()).decode()
            if not secrets.compare_digest(request.headers.get("authorization", ""), expected):
                return JSONResponse({"error": "authentication required"}, status_code=401,
                                    headers={"WWW-Authenticate": "Basic"})
        return await call_next(request)

    async def json_body(request: Request) -> dict[str, Any]:
        raw = await request.body()
        try:
            body = json.loads(raw or b"{}")
        except (UnicodeDecodeError, json.JSONDecodeError) as error:
            raise LabelStudioRequestError(f"the request body is not JSON: {error}") from None
        if not isinstance(body, dict):
            raise LabelStudioRequestError("the request body must be a JSON object")
        return body

    @app.exception_handler(FbrsError)
    async def fbrs_error(request: Request, error: FbrsError):
        status = 413 if isinstance(error, ImageTooLargeError) else 502 if isinstance(error, ImageFetchError) else 400
        return JSONResponse({"error": str(error)}, status_code=status)

    @app.get("/")
    @app.get("/health")
    async def health():
        segmenter = backend.segmenter
        return {"status": "UP", "model_class": "fbrs", "model_version": backend.version, "mode": segmenter.mode,
                "v2": True, "images_warm": len(segmenter.cached_images), **segmenter.stats}

    @app.post("/setup")
    async def setup(request: Request):
        return backend.setup(await json_body(request))

    @app.post("/predict")
    async def predict(request: Request):
        body = await json_body(request)
        return await run_in_threadpool(backend.predict, body)

    @app.get("/versions")
    @app.post("/versions")
    async def versions():
        return {"versions": [backend.version], "model_dir": None, "v2": True}

    @app.post("/webhook")
    async def webhook():
        return JSONResponse({}, status_code=201)  # fbrs does not train from annotations: events are ignored

    @app.get("/metrics")
    async def metrics():
        return {}

    return HostGuard(BodySizeLimit(app, lambda scope: MAX_REQUEST_BYTES), allowed_hosts=allowed_hosts)
