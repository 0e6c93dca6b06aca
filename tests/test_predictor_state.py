"""The one predictor surface (fbrs.inference.interactive): typed states that know their image, one undo /
redo history (the app's included), one click check with one message, and the caller's model left alone."""

from __future__ import annotations

import dataclasses
import io
import json

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient
from PIL import Image

import fbrs
from fbrs.app.engine import PredictionEngine, PredictorSettings
from fbrs.app.project import AnnotationProject
from fbrs.app.server import create_app
from fbrs.app.sessions import AnnotationSession
from fbrs.baselines.graphcut import GraphCutPredictor
from fbrs.errors import InvalidClickError, InvalidStateError
from fbrs.evaluation.robot import ClickRobot
from fbrs.inference.clicks import Click, validate_click
from fbrs.inference.interactive import InteractivePredictor, PredictorState
from fbrs.inference.predictor import LearnedState
from fbrs.inference.sam_predictor import SamPredictor, SamState
from fbrs.models.sam.tiny import build_tiny_sam_model
from tests.test_app_helpers import recording_engine, sample_folder

SHAPE = (48, 64)
CLICKS = [(20.0, 30.0, True), (5.0, 5.0, False), (25.0, 40.0, True)]


def picture(seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    image = rng.integers(0, 60, size=(*SHAPE, 3), dtype=np.uint8)
    image[12:36, 20:50] = rng.integers(180, 255, size=(24, 30, 3), dtype=np.uint8)
    return image


def predictors(tiny_model):
    """One predictor of each family: learned, SAM, a classical baseline."""
    return {
        "learned": fbrs.Predictor(tiny_model, mode="f-BRS-B", zoom_in_target_size=48),
        "sam": SamPredictor(build_tiny_sam_model(seed=0), insertion="image_tokens"),
        "baseline": GraphCutPredictor(),
    }


@pytest.fixture(scope="module")
def families(tiny_model):
    return predictors(tiny_model)


@pytest.mark.parametrize("family", ["learned", "sam", "baseline"])
def test_a_state_of_another_image_of_the_same_size_is_refused(families, family):
    predictor = families[family]
    first, other = picture(0), picture(0).copy()
    other[0, 0, 0] ^= 1  # one bit of one pixel: still another image
    predictor.set_image(first)
    predictor.add_click(*CLICKS[0])
    state = predictor.get_state()
    assert isinstance(state, PredictorState) and state.image.shape == (*SHAPE, 3)
    predictor.set_image(other)
    with pytest.raises(InvalidStateError, match="another image"):
        predictor.set_state(state)
    with pytest.raises(InvalidStateError, match="another image"):
        predictor.predict([CLICKS[0][:2], CLICKS[1][:2]], [1, 0], prev_state=state)
    with pytest.raises(InvalidStateError, match="another image"):
        predictor.set_state({**state})  # the mapping view of a state is checked as the state itself
    assert predictor.clicks == []  # nothing was taken from the refused state
    predictor.set_image(first.copy())  # the same pixels again: its states are welcome
    predictor.set_state(state)
    assert len(predictor.clicks) == 1


@pytest.mark.parametrize("family", ["learned", "sam", "baseline"])
def test_states_are_typed_frozen_and_foreign_ones_are_refused(families, family):
    predictor = families[family]
    predictor.set_image(picture(1))
    predictor.add_click(*CLICKS[0])
    state = predictor.get_state()
    assert predictor.get_state() is state  # nothing changed: the very same object
    with pytest.raises(dataclasses.FrozenInstanceError):
        state.clicks = ()
    with pytest.raises(InvalidStateError, match="not a state"):
        predictor.set_state({"clicks": [], "probabilities": None, "history_length": 0})
    # Another family's state of the same image: its fields do not fit.
    foreign = LearnedState if family != "learned" else SamState
    extra = {name: None for name in foreign._field_names() if name not in PredictorState._field_names()}
    with pytest.raises(InvalidStateError, match="not a state"):
        predictor.set_state(foreign(image=state.image, clicks=(), probabilities=None, previous=None, **extra))


@pytest.mark.parametrize("family", ["learned", "sam", "baseline"])
def test_undo_and_redo_are_exact_and_a_new_click_drops_the_redo_stack(families, family):
    predictor = families[family]
    predictor.set_image(picture(2))
    maps = [predictor.add_click(*click).copy() for click in CLICKS]
    states = [state for state in predictor.get_state().chain()]
    assert [len(state.clicks) for state in states] == [3, 2, 1, 0]
    np.testing.assert_array_equal(predictor.undo(), maps[1])
    assert predictor.get_state() is states[1]  # undo goes back to the very state, nothing recomputed
    np.testing.assert_array_equal(predictor.undo(), maps[0])
    assert predictor.can_redo
    np.testing.assert_array_equal(predictor.redo(), maps[1])
    np.testing.assert_array_equal(predictor.redo(), maps[2])
    assert not predictor.can_redo
    np.testing.assert_array_equal(predictor.redo(), maps[2])  # nothing to redo: unchanged
    predictor.undo()
    np.testing.assert_array_equal(predictor.add_click(*CLICKS[2]), maps[2])  # the restored state computes the same
    assert not predictor.can_redo


def expected_messages(height: int, width: int) -> dict[str, str]:
    return {
        "outside": f"click (y={height}, x=3) is outside the image (height {height}, width {width})",
        "negative": f"click (y=2, x=-1) is outside the image (height {height}, width {width})",
        "nan": "click (y=nan, x=3.0) has a non-finite coordinate",
        "text": "click coordinates must be numbers, got y='a', x=3",
    }


BAD = {"outside": (SHAPE[0], 3), "negative": (2, -1), "nan": (float("nan"), 3), "text": ("a", 3)}


@pytest.mark.parametrize("family", ["learned", "sam", "baseline"])
def test_every_predictor_refuses_bad_clicks_with_the_one_message(families, family):
    predictor = families[family]
    predictor.set_image(picture(3))
    expected = expected_messages(*SHAPE)
    for case, (y, x) in BAD.items():
        with pytest.raises(InvalidClickError) as error:
            predictor.add_click(y, x, True)
        assert str(error.value) == expected[case]
        with pytest.raises(InvalidClickError) as error:
            validate_click(Click(y, x, True), SHAPE)
        assert str(error.value) == expected[case]
    assert predictor.clicks == []
    # A click on the last pixel row's far half is inside (the one rule: 0 <= y < height).
    assert validate_click(Click(SHAPE[0] - 0.5, 0, 1), SHAPE) == Click(SHAPE[0] - 0.5, 0.0, True)


def test_the_app_gives_the_one_message_for_a_click_outside_the_image(tmp_path):
    image = picture(4)
    session = AnnotationSession(image, recording_engine())
    expected = expected_messages(*SHAPE)
    for case in ("outside", "negative", "nan"):
        with pytest.raises(InvalidClickError) as error:
            session.add_click(Click(*BAD[case], True))
        assert str(error.value) == expected[case]
    app = create_app(recording_engine(), AnnotationProject(sample_folder(tmp_path), tmp_path / "out"))
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    with TestClient(app, base_url="http://127.0.0.1") as client:
        # /api/predict (multipart, clicks as {x, y} JSON) and a session's /clicks route (a JSON body).
        response = client.post("/api/predict", files={"image": ("i.png", buffer.getvalue())},
                               data={"clicks": json.dumps([{"x": 3, "y": SHAPE[0], "positive": True}])})
        assert response.status_code == 400 and response.json()["detail"] == expected["outside"]
        session_id = client.post("/api/sessions", files={"image": ("i.png", buffer.getvalue())}).json()["session_id"]
        response = client.post(f"/api/sessions/{session_id}/clicks", json={"x": -1, "y": 2, "positive": True})
        assert response.status_code == 400 and response.json()["detail"] == expected["negative"]


def test_the_robot_checks_a_click_placed_by_someone_else():
    robot = ClickRobot(np.ones(SHAPE, dtype=bool))
    with pytest.raises(InvalidClickError) as error:
        robot.add_click(Click(*BAD["outside"], True))
    assert str(error.value) == expected_messages(*SHAPE)["outside"]
    assert robot.add_click(Click(4.0, 7.0, True)) == Click(4, 7, True) and robot.clicks == [Click(4, 7, True)]


def test_app_undo_and_redo_go_through_the_predictors_one_history(tiny_model):
    session = AnnotationSession(picture(5), PredictionEngine(tiny_model), settings=PredictorSettings(mode="f-BRS-B"))
    maps = [session.add_click(Click(*click)).copy() for click in CLICKS]
    predictor = session._predictor
    assert isinstance(predictor, InteractivePredictor)
    after_two = predictor.get_state().previous
    session.undo()
    assert predictor.get_state() is after_two and predictor.can_redo and session.state()["can_redo"]
    np.testing.assert_array_equal(session.probabilities, maps[1])
    session.redo()
    assert len(predictor.clicks) == 3 and not predictor.can_redo
    np.testing.assert_array_equal(session.probabilities, maps[2])
    # The predictor's own undo is the session's: what one does, the other shows.
    predictor.undo()
    assert session.state()["clicks"] == [{"x": 30.0, "y": 20.0, "positive": True},
                                         {"x": 5.0, "y": 5.0, "positive": False}]
    assert session.state()["can_redo"]
    session.add_click(Click(*CLICKS[2]))
    assert not session.state()["can_redo"]
    np.testing.assert_array_equal(session.probabilities, maps[2])


def test_a_foreign_predictor_gets_the_one_history_too():
    engine = recording_engine()
    session = AnnotationSession(picture(6), engine)
    first = session.add_click(Click(20, 30, True)).copy()
    second = session.add_click(Click(10, 10, True)).copy()
    inner = session._predictor.inner
    session.undo()
    assert inner.clicks == [(20.0, 30.0, True)]  # the wrapped predictor followed by its own undo
    np.testing.assert_array_equal(session.probabilities, first)
    session.redo()
    assert len(inner.clicks) == 2
    np.testing.assert_array_equal(session.probabilities, second)


def test_the_callers_model_keeps_its_mode():
    torch.manual_seed(0)
    model = fbrs.build_model("tiny_test")  # a fresh model is in training mode
    frozen = next(module for module in model.modules() if isinstance(module, torch.nn.BatchNorm2d))
    frozen.eval()  # as a fine-tuning loop with frozen BatchNorm statistics has it
    modes = [module.training for module in model.modules()]
    predictor = fbrs.Predictor(model, mode="f-BRS-B", zoom_in_target_size=48)
    predictor.set_image(picture(7))
    probabilities = [predictor.add_click(*click).copy() for click in CLICKS]
    assert [module.training for module in model.modules()] == modes
    # Inside a click the model ran in eval mode: the same maps as the same model set to eval by its caller.
    reference = fbrs.Predictor(model.eval(), mode="f-BRS-B", zoom_in_target_size=48)
    reference.set_image(picture(7))
    for click, expected in zip(CLICKS, probabilities, strict=True):
        np.testing.assert_array_equal(reference.add_click(*click), expected)
