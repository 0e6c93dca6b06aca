"""Progressive merge (fbrs.inference.merge): from its start click on, a click changes the mask only where
the change touches it; in the SAM predictor the merged logits are the output and the next mask input."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fbrs.inference.clicks import Click
from fbrs.inference.merge import MergeConfig, progressive_merge, reverted_pixels
from fbrs.inference.sam_predictor import SamPredictor
from fbrs.inference.sam_zoom import clicks_in_frame
from fbrs.models.sam.tiny import build_tiny_sam_model

SIZE = 40


def _box(top: int, left: int, bottom: int, right: int) -> np.ndarray:
    logits = np.full((SIZE, SIZE), -5.0, dtype=np.float32)
    logits[top:bottom, left:right] = 5.0
    return logits


# The previous mask: an object at the left. The new answer adds a missed part at the right (where the
# positive click is) but also loses a far corner of the object and grows a far blob of background.
PREVIOUS = _box(5, 5, 30, 20)
NEW = PREVIOUS.copy()
NEW[10:20, 20:30] = 5.0  # the missed part, touching the click at (15, 25)
NEW[5:10, 5:10] = -5.0  # a far loss
NEW[34:38, 34:38] = 5.0  # a far blob
CLICK = Click(15, 25, True)


def test_only_the_change_that_touches_the_click_is_kept():
    merged = progressive_merge(PREVIOUS, NEW, CLICK, 0.0, MergeConfig())
    expected = PREVIOUS.copy()
    expected[10:20, 20:30] = 5.0
    np.testing.assert_array_equal(merged, expected)
    # Where the two agree on the side of the threshold the new values are kept (refined boundaries).
    softer = NEW * 0.5
    merged = progressive_merge(PREVIOUS, softer, CLICK, 0.0, MergeConfig())
    np.testing.assert_array_equal(merged[20:30, 5:20], softer[20:30, 5:20])


def test_a_click_the_network_ignored_takes_its_answer_whole():
    ignored = Click(2, 35, False)  # nothing changed near it
    assert not reverted_pixels(PREVIOUS, NEW, ignored, 0.0, MergeConfig()).any()


def test_reach_and_monotone():
    near = Click(15, 32, True)  # two pixels right of the added part
    assert reverted_pixels(PREVIOUS, NEW, near, 0.0, MergeConfig(reach=1.5)).sum() == 0  # untouched: whole
    reverted = reverted_pixels(PREVIOUS, NEW, near, 0.0, MergeConfig(reach=3.0))
    assert reverted[5:10, 5:10].all() and reverted[34:38, 34:38].all() and not reverted[10:20, 20:30].any()
    # monotone: a positive click only adds; a loss touching it is reverted too.
    touching_loss = NEW.copy()
    touching_loss[10:20, 15:20] = -5.0  # removed, and 8-connected to the added part at the click
    plain = reverted_pixels(PREVIOUS, touching_loss, CLICK, 0.0, MergeConfig())
    monotone = reverted_pixels(PREVIOUS, touching_loss, CLICK, 0.0, MergeConfig(monotone=True))
    assert not plain[10:20, 15:20].any() and monotone[10:20, 15:20].all()
    assert not monotone[10:20, 20:30].any()


def test_config_errors():
    with pytest.raises(ValueError, match="start_click"):
        MergeConfig(start_click=1)
    with pytest.raises(ValueError, match="reach"):
        MergeConfig(reach=-1)
    with pytest.raises(TypeError, match="merge must be"):
        SamPredictor(build_tiny_sam_model(seed=0), merge="yes")


def test_the_sam_predictor_merges_from_the_start_click_and_feeds_the_merge_back(box_image):
    model = build_tiny_sam_model(seed=1)
    config = MergeConfig(start_click=2)
    plain, merged = SamPredictor(model), SamPredictor(model, merge=config)
    clicks = [(35, 50, True), (5, 5, False), (40, 60, True)]
    for predictor in (plain, merged):
        predictor.set_image(box_image)
    np.testing.assert_array_equal(plain.add_click(*clicks[0]), merged.add_click(*clicks[0]))  # before the start
    previous = merged.get_state()["low_res"]
    merged.add_click(*clicks[1])
    plain.add_click(*clicks[1])
    # What the merged predictor holds is the merge of its previous logits with the plain answer to the same
    # mask input, in the low-res frame.
    sizes = model.config.input_size, model.config.low_res_size
    low_click = clicks_in_frame(merged.get_state()["frame"], merged.clicks[-1:], *sizes)[0]
    expected = progressive_merge(previous[0, 0].numpy(), plain.get_state()["low_res"][0, 0].numpy(), low_click, 0.0,
                                 config)
    np.testing.assert_array_equal(merged.get_state()["low_res"][0, 0].numpy(), expected)
    # The tiny model's second answer changes the mask away from the negative click too: the merge acts.
    assert not np.array_equal(merged.probabilities, plain.probabilities)
    # Exact undo: the state before the merged click comes back unchanged.
    merged.undo()
    assert torch.equal(merged.get_state()["low_res"], previous)
