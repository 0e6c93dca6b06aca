"""The API's input layer: typed requests with finite numbers and strict booleans, checked before any work.

Every value a client sends passes through here: JSON bodies as pydantic models (FastAPI answers 422),
the multipart `clicks` of /api/predict and the `object` query as functions that raise the package's
errors (400 / 413). Limits that cost nothing to check (how many clicks, how large an id) come first, so
a hostile request is refused before it decodes an image or runs a prediction.

Clicks arrive (and are saved) as {"x": column, "y": row, "positive"} JSON; `click_from_json` and
`ClickRequest.to_click` turn them into the library's `Click` (y, x) here and nowhere else, and
`click_to_json` turns them back. Whether a click lies inside the image is the library's one check,
`fbrs.inference.clicks.validate_click`.
"""

from __future__ import annotations

import json
import math
import re
from typing import Annotated, Any

from pydantic import BaseModel, Field

from fbrs.app.errors import PayloadTooLargeError
from fbrs.errors import ConfigError, InvalidClickError
from fbrs.inference.clicks import Click

MAX_CLICKS_PER_OBJECT = 100
MAX_OBJECT_ID = 65535  # the instance PNG is uint16
_OBJECT_ID = re.compile(r"[0-9]{1,5}")  # ASCII digits only: str.isdigit() also accepts '²'

# pydantic's and the session route's reading of a boolean; anything else is refused (never Python's
# truthiness, under which the string "false" is true).
_TRUE = frozenset({"true", "1", "yes", "on", "t", "y"})
_FALSE = frozenset({"false", "0", "no", "off", "f", "n"})

FiniteFloat = Annotated[float, Field(allow_inf_nan=False)]


class ClickRequest(BaseModel):
    x: FiniteFloat = Field(description="column, full-resolution pixels, 0 <= x < width")
    y: FiniteFloat = Field(description="row, full-resolution pixels, 0 <= y < height")
    positive: bool = Field(True, description="true = object, false = background")
    label: str | None = Field(None, max_length=64,
                              description="label the current object with one of the project's labels (GET /api/info)")

    def to_click(self) -> Click:
        """The library's Click: (x, y) becomes (y, x)."""
        return Click(y=self.y, x=self.x, is_positive=self.positive)


class LabelRequest(BaseModel):
    label: str = Field(max_length=64, description="one of the project's labels (GET /api/info)")


class SettingsRequest(BaseModel):
    mode: str | None = Field(None, max_length=64, description="predictor mode, see GET /api/info")
    zoom_in: bool | None = None
    prob_threshold: float | None = Field(None, gt=0.0, lt=1.0, allow_inf_nan=False)
    flip: bool | None = Field(None, description="flip test-time augmentation (learned modes; 2x the time)")


def parse_bool(value: Any, what: str) -> bool:
    """True/False, 0/1 or one of the usual spellings ("false", "no", "off", ...); else InvalidClickError."""
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    if isinstance(value, str):
        text = value.strip().lower()
        if text in _TRUE:
            return True
        if text in _FALSE:
            return False
    raise InvalidClickError(f"{what} must be true or false, got {_short(value)}")


def parse_coordinate(value: Any, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise InvalidClickError(f"{what} must be a number, got {_short(value)}")
    try:
        number = float(value)
    except (ValueError, OverflowError):
        raise InvalidClickError(f"{what} must be a number, got {_short(value)}") from None
    if not math.isfinite(number):
        raise InvalidClickError(f"{what} must be a finite number, got {_short(value)}")
    return number


def click_from_json(item: Any, what: str = "click", default_positive: bool | None = None) -> Click:
    """{"x": column, "y": row, "positive": bool} -> the library's Click (y, x); numbers must be finite and
    `positive` a real boolean (or missing, when `default_positive` is given). InvalidClickError otherwise,
    its message starting with `what`."""
    if not isinstance(item, dict) or "x" not in item or "y" not in item or (
        default_positive is None and "positive" not in item
    ):
        raise InvalidClickError(f"{what}: a click needs numeric 'x', 'y' and boolean 'positive', got {_short(item)}")
    x = parse_coordinate(item["x"], f"{what}: x")
    y = parse_coordinate(item["y"], f"{what}: y")
    return Click(y=y, x=x, is_positive=parse_bool(item.get("positive", default_positive), f"{what}: positive"))


def click_to_json(click: Click) -> dict[str, Any]:
    """The app's JSON of a click (the API's answers and the saved click logs): {"x", "y", "positive"}."""
    return {"x": click.x, "y": click.y, "positive": click.is_positive}


def parse_clicks(text: str, max_clicks: int = MAX_CLICKS_PER_OBJECT) -> list[Click]:
    """The `clicks` form field of /api/predict ({x, y, positive} JSON, positive by default) -> [Click], all
    parsed before any is used."""
    try:
        values = json.loads(text)
    except (ValueError, RecursionError) as error:
        raise InvalidClickError(f"clicks must be a JSON list of {{x, y, positive}}: {error}") from None
    if not isinstance(values, list) or not values:
        raise InvalidClickError("clicks must be a non-empty JSON list of {x, y, positive}")
    if len(values) > max_clicks:
        raise PayloadTooLargeError(f"{len(values)} clicks given; an object takes at most {max_clicks}")
    return [click_from_json(item, f"click {index}", default_positive=True) for index, item in enumerate(values)]


def parse_object(text: str) -> str | int:
    """The `object` query: 'current', 'all' or a finished object's id (1..65535)."""
    if text in ("current", "all"):
        return text
    if _OBJECT_ID.fullmatch(text) and 1 <= int(text) <= MAX_OBJECT_ID:
        return int(text)
    raise ConfigError(f"object must be 'current', 'all' or an object id 1..{MAX_OBJECT_ID}, got {_short(text)}")


def _short(value: Any, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} characters)"


def _json_safe(value: Any, depth: int = 0) -> Any:
    """`value` as something json.dumps(allow_nan=False) writes: NaN/inf and odd types become strings."""
    if value is None or isinstance(value, (bool, int, str)):
        if isinstance(value, str) and len(value) > 200:
            return value[:200] + f"... ({len(value)} characters)"
        if isinstance(value, int) and not isinstance(value, bool) and abs(value) > 2**53:
            return _short(value)
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else repr(value)
    if depth < 3 and isinstance(value, (list, tuple)):
        return [_json_safe(item, depth + 1) for item in value[:20]]
    if depth < 3 and isinstance(value, dict):
        return {str(key)[:100]: _json_safe(item, depth + 1) for key, item in list(value.items())[:20]}
    return _short(value)


def validation_error_body(errors: list[dict[str, Any]]) -> dict[str, Any]:
    """FastAPI's 422 detail, made serialisable whatever the client sent (a NaN in the input otherwise
    makes the error response itself fail, and the connection with it)."""
    detail = []
    for error in errors[:20]:
        entry = {"type": error.get("type"), "loc": _json_safe(list(error.get("loc", ()))),
                 "msg": str(error.get("msg", ""))[:500]}
        if "input" in error:
            entry["input"] = _json_safe(error["input"])
        detail.append(entry)
    return {"detail": detail}
