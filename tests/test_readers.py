"""The readers every outside file goes through: images (size limits, EXIF orientation, 16-bit), atomic
writes (permissions), checkpoints (messages)."""

from __future__ import annotations

import argparse

import pytest
import torch

from fbrs.errors import CheckpointError


def test_a_pickle_with_objects_is_refused_without_advising_weights_only_false(tmp_path):
    from fbrs.models import load_model

    path = tmp_path / "foreign.pth"
    torch.save({"state_dict": {}, "args": argparse.Namespace(lr=0.1)}, path)  # an object: refused by weights_only
    with pytest.raises(CheckpointError) as raised:
        load_model(path)
    message = str(raised.value)
    assert "weights_only" not in message and "False" not in message
    assert "never unpickles" in message
