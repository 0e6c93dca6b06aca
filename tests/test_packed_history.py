"""Undo history without a full probability map per click: packed maps, the predictor's and the app's."""

from __future__ import annotations

import numpy as np

import fbrs
from fbrs.app.engine import PredictionEngine, PredictorSettings
from fbrs.app.sessions import AnnotationSession
from fbrs.inference.packed import PackedMap, pack, unpack


def test_pack_keeps_the_non_zero_box_and_unpacks_bit_exactly():
    rng = np.random.default_rng(0)
    full = np.zeros((300, 400), dtype=np.float32)
    full[40:90, 100:220] = rng.random((50, 120), dtype=np.float32)
    full[40, 100] = 0.0  # zeros inside the box are kept as values, the box stays the same
    packed = pack(full)
    assert isinstance(packed, PackedMap)
    assert (packed.top, packed.left, packed.values.shape) == (40, 100, (50, 120))
    assert packed.nbytes == 50 * 120 * 4
    restored = unpack(packed)
    assert restored.dtype == np.float32 and not restored.flags.writeable
    np.testing.assert_array_equal(restored, full)


def test_pack_leaves_dense_maps_shared_and_handles_empty_maps():
    dense = np.full((64, 64), 0.25, dtype=np.float32)
    assert pack(dense) is dense
    empty = np.zeros((64, 64), dtype=np.float32)
    packed = pack(empty)
    assert isinstance(packed, PackedMap) and packed.values.size == 0
    np.testing.assert_array_equal(unpack(packed), empty)
    assert unpack(None) is None


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
    assert isinstance(stored, PackedMap)
    assert stored.nbytes < 0.5 * maps[-1].nbytes
    np.testing.assert_array_equal(predictor.undo(), maps[0])
    # The restored Zoom-In state gives the same next prediction as the first time.
    np.testing.assert_array_equal(predictor.add_click(*CLICKS[2]), maps[1])
    np.testing.assert_array_equal(predictor.undo(), maps[0])
    np.testing.assert_array_equal(predictor.undo(), blob)


def test_session_keeps_only_the_current_map_and_restores_the_others_exactly(tiny_model):
    session = AnnotationSession(canvas(), PredictionEngine(tiny_model), settings=PredictorSettings(mode="f-BRS-B"))
    maps = [session.add_click(x, y, positive).copy() for y, x, positive in CLICKS]
    assert [step.probabilities is None for step in session._steps] == [True, True, False]
    session.undo()
    np.testing.assert_array_equal(session.probabilities, maps[1])
    session.undo()
    np.testing.assert_array_equal(session.probabilities, maps[0])
    session.redo()
    session.redo()
    np.testing.assert_array_equal(session.probabilities, maps[2])
    np.testing.assert_array_equal(session.current_mask(), maps[2] > session.settings.prob_threshold)
