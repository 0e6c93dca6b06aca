"""Undo history without a full probability map per click: packed maps, the predictor's and the app's."""

from __future__ import annotations

import numpy as np
import torch

import fbrs
from fbrs.app.engine import PredictionEngine, PredictorSettings
from fbrs.app.sessions import AnnotationSession
from fbrs.inference.clicks import Click
from fbrs.inference.packed import UpsampledMap, unpack, upsample_into


def test_upsampled_map_repeats_the_resize_into_its_box():
    source = torch.rand((1, 1, 20, 30), generator=torch.Generator().manual_seed(0))
    stored = UpsampledMap((300, 400), (40, 89, 100, 219), source)
    assert stored.nbytes == 20 * 30 * 4
    full = stored.unpack()
    assert full.shape == (300, 400) and full.dtype == np.float32 and not full.flags.writeable
    expected = torch.nn.functional.interpolate(source, size=(50, 120), mode="bilinear", align_corners=True)
    np.testing.assert_array_equal(full[40:90, 100:220], expected[0, 0].numpy())
    full_copy = full.copy()
    full_copy[40:90, 100:220] = 0
    assert not full_copy.any()
    whole = UpsampledMap((60, 90), None, source).unpack()
    np.testing.assert_array_equal(whole, upsample_into(source, (60, 90))[0, 0].numpy())
    assert unpack(None) is None and unpack(full) is full


CANVAS_SHAPE = (300, 400)
CLICKS = [(150.0, 200.0, True), (160.0, 215.0, True), (100.0, 120.0, False)]  # (y, x, positive)


def canvas() -> np.ndarray:
    rows, cols = np.mgrid[0 : CANVAS_SHAPE[0], 0 : CANVAS_SHAPE[1]]
    return np.stack([rows % 256, cols % 256, (rows + cols) % 256], axis=-1).astype(np.uint8)


def test_predictor_history_is_packed_after_zoom_in_and_undo_is_exact(tiny_model):
    predictor = fbrs.Predictor(tiny_model, mode="f-BRS-B", zoom_in_target_size=64)
    predictor.set_image(canvas())
    predictor.add_click(*CLICKS[0])
    # The untrained model's map is flat; give the predictor a small object instead, as a trained model
    # would have found, so that the next clicks run on a Zoom-In crop around it.
    blob = np.zeros(CANVAS_SHAPE, dtype=np.float32)
    blob[130:180, 180:240] = 0.9
    blob.flags.writeable = False
    state = predictor.get_state()
    predictor.set_state({**state, "probabilities": blob, "zoom_in": {**state["zoom_in"], "previous_probs": blob}})
    maps = [predictor.add_click(*click).copy() for click in CLICKS[1:]]
    assert predictor.zoom_in.applied
    stored = predictor.get_state()["probabilities"]
    assert isinstance(stored, UpsampledMap) and stored.box == predictor.zoom_in.roi
    assert stored.nbytes < 0.1 * maps[-1].nbytes
    np.testing.assert_array_equal(predictor.undo(), maps[0])
    # The restored Zoom-In state gives the same next prediction as the first time.
    np.testing.assert_array_equal(predictor.add_click(*CLICKS[2]), maps[1])
    np.testing.assert_array_equal(predictor.undo(), maps[0])
    np.testing.assert_array_equal(predictor.undo(), blob)


def test_session_keeps_only_the_current_map_and_restores_the_others_exactly(tiny_model):
    session = AnnotationSession(canvas(), PredictionEngine(tiny_model), settings=PredictorSettings(mode="f-BRS-B"))
    maps = [session.add_click(Click(*click)).copy() for click in CLICKS]
    # The session keeps no maps of its own: the predictor's one history holds them (packed, as above).
    assert [len(state.clicks) for state in session._predictor.kept_states()] == [3, 2, 1, 0]
    session.undo()
    np.testing.assert_array_equal(session.probabilities, maps[1])
    session.undo()
    np.testing.assert_array_equal(session.probabilities, maps[0])
    session.redo()
    session.redo()
    np.testing.assert_array_equal(session.probabilities, maps[2])
    np.testing.assert_array_equal(session.current_mask(), maps[2] > session.settings.prob_threshold)
