"""Export the feed-forward part of an InteractiveModel to ONNX (`fbrs export-onnx`).

What is exported is a *part* of the network. The feed-forward parts take the inputs

* ``image``: (B, 3, H, W) float32, ImageNet-normalised;
* ``coord_features``: (B, 2, H, W) float32, the distance maps of the clicks (`fbrs.models.distance_maps`).

The distance maps stay in torch: they depend on the number of clicks (a padded (B, 2N, 2) points tensor whose
N grows with every click) and cost little; the graph starts at the fusion conv. Parts and their outputs:

* ``full``: ``logits`` (B, 1, H, W), the whole NoBRS forward pass;
* ``after_backbone`` (f-BRS-A): ``features`` (B, C4, H/s, W/s) and ``skip`` (B, 32, H/4, W/4);
* ``after_aspp`` (f-BRS-B): ``features`` (B, ch + 32, H/4, W/4);
* ``after_decoder`` (f-BRS-C): ``features`` (B, ch, H/4, W/4).

Two more parts hold the *local* layers that f-BRS re-runs at every L-BFGS evaluation
(`InteractiveModel.local_logits`); they take ``features`` and return ``low_logits`` (B, 1, h, w), the logits
before the upsampling to the input size:

* ``decoder_head`` (after f-BRS-A's ASPP and after f-BRS-B): ``features`` (B, ch + 32, h, w), decoder + head;
* ``head`` (after f-BRS-C): ``features`` (B, ch, h, w), the head alone.

The predictor runs them for the whole-map pass of each evaluation, which needs no gradient; the gradient
(on small windows) stays in torch. Since torch and ONNX Runtime then share the work of one objective, the
ONNX file must come from the very weights of the torch model: the file's metadata holds the model config and
a sha256 of its state_dict (`fbrs.onnx.parts.weights_fingerprint`), which `fbrs.onnx.runtime` checks.
Batch, height and width are dynamic axes (torch.export's dynamic shapes): one file serves every Zoom-In crop
size, with or without flip TTA.

Needs the optional dependencies `onnx` and `onnxscript` (the torch.export-based exporter): `pip install
'fbrs[onnx]'`. The legacy TorchScript exporter is not used: with dynamic height/width it bakes the
traced sizes into the bilinear upsampling and its outputs are wrong at every other size (measured).
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import warnings
from pathlib import Path

import torch
from torch import nn

from fbrs.errors import ConfigError
from fbrs.io_utils import write_bytes_atomic
from fbrs.models.interactive_model import InteractiveModel
from fbrs.onnx.parts import (
    FORMAT_VERSION,
    INSERTION_OF_LOCAL,
    LOCAL_PARTS,
    OUTPUT_NAMES,
    PART_INPUTS,
    PARTS,
    require_modules,
    weights_fingerprint,
)


class ExportedPart(nn.Module):
    """The traced module of one part: its inputs (`PART_INPUTS`) -> its outputs (`OUTPUT_NAMES`)."""

    def __init__(self, model: InteractiveModel, part: str) -> None:
        super().__init__()
        if part not in PARTS:
            raise ConfigError(f"unknown ONNX part {part!r}; known: {', '.join(PARTS)}")
        self.model = model
        self.part = part

    def forward(self, *inputs: torch.Tensor):
        if self.part in LOCAL_PARTS:
            return self.model.local_logits(INSERTION_OF_LOCAL[self.part], *inputs)
        if self.part == "full":
            return self.model.forward_with_maps(*inputs)
        features, skip = self.model.features_from_maps(self.part, *inputs)
        return features if skip is None else (features, skip)


def example_inputs(
    model: InteractiveModel, part: str, size: tuple[int, int], batch: int = 2, generator: torch.Generator | None = None
) -> tuple[torch.Tensor, ...]:
    """Random inputs of `part` for an input image of `size` (H, W): the image and distance maps, or for a
    local part the features at stride 4 (H/4, W/4)."""
    parameter = next(model.parameters())
    options = {"dtype": parameter.dtype, "generator": generator}
    if part in LOCAL_PARTS:
        channels = model.insertion_channels(INSERTION_OF_LOCAL[part])
        features = torch.randn(batch, channels, size[0] // 4, size[1] // 4, **options)
        return (features.to(parameter.device),)
    image = torch.randn(batch, 3, *size, **options)
    coord_features = torch.rand(batch, 2, *size, **options)
    return image.to(parameter.device), coord_features.to(parameter.device)


def export_onnx_bytes(
    model: InteractiveModel, part: str = "full", example_size: tuple[int, int] = (320, 288), opset: int | None = None
) -> bytes:
    """Export `part` of `model` (eval mode) and return the serialized ONNX model, metadata included.

    example_size: (H, W) of the example input used for tracing. Both sides are dynamic in the result; the
    example only must not be special for torch.export (not 0 or 1, H != W so the two axes stay apart).
    """
    if model.config.prev_mask_input:  # issue 18: the exported parts have no previous-mask input
        raise ConfigError(f"ONNX export of a prev_mask_input model ({model.config.name}) is not supported yet")
    require_modules("onnx", "onnxscript")
    import onnx

    if part not in PARTS:
        raise ConfigError(f"unknown ONNX part {part!r}; known: {', '.join(PARTS)}")
    height, width = example_size
    if min(height, width) < 32 or height == width or height // 4 == width // 4:
        raise ConfigError(f"example_size must be two different sides >= 32 (also after // 4), got {example_size}")
    # Batch 2 = the flip-TTA batch; a batch of 1 would be specialised (torch.export treats size 1 as static).
    inputs = example_inputs(model, part, example_size)
    smallest = 2 if part in LOCAL_PARTS else 16  # a local part sees the stride-4 maps of small crops
    batch = torch.export.Dim("batch", min=1, max=1024)
    rows = torch.export.Dim("height", min=smallest, max=65536)
    cols = torch.export.Dim("width", min=smallest, max=65536)
    axes = {0: batch, 2: rows, 3: cols}
    was_training = model.training
    model.eval()
    try:
        with _quiet_exporter(), torch.no_grad():
            program = torch.onnx.export(
                ExportedPart(model, part),
                inputs,
                None,
                input_names=list(PART_INPUTS[part]),
                output_names=list(OUTPUT_NAMES[part]),
                # ExportedPart.forward takes *inputs: dynamic shapes are given per position.
                dynamic_shapes=[tuple(axes for _ in inputs)],
                opset_version=opset,
                dynamo=True,
                optimize=True,  # constant folding / fusions: ONNX Runtime ran 2.5x slower without (measured)
                verbose=False,
            )
    finally:
        model.train(was_training)
    proto = program.model_proto
    metadata = {
        "fbrs.format_version": FORMAT_VERSION,
        "fbrs.part": part,
        "fbrs.model_config": model.config.to_json(),
        "fbrs.weights_sha256": weights_fingerprint(model),
        "fbrs.inputs": ",".join(PART_INPUTS[part]),
        "fbrs.outputs": ",".join(OUTPUT_NAMES[part]),
        "fbrs.torch_version": torch.__version__,
    }
    for key, value in metadata.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    proto.doc_string = f"fbrs {model.config.name} ({model.config.backbone}), part {part}: see fbrs.onnx.export"
    # Weights inline (our models are far below protobuf's 2 GB limit): one self-contained file.
    data = proto.SerializeToString()
    onnx.checker.check_model(onnx.load_from_string(data))
    return data


def export_onnx(
    model: InteractiveModel,
    path: str | os.PathLike,
    part: str = "full",
    example_size: tuple[int, int] = (320, 288),
    opset: int | None = None,
) -> Path:
    """Export `part` of `model` to `path`, written atomically (the old file or the complete new one)."""
    path = Path(path)
    if path.is_dir():
        raise ConfigError(f"{path} is a folder: give the path of the .onnx file to write")
    data = export_onnx_bytes(model, part, example_size, opset)
    write_bytes_atomic(path, data)
    return path


@contextlib.contextmanager
def _quiet_exporter():
    """The exporter prints progress lines and warns about things that do not concern us (torchvision
    missing, axis renaming of the shared dynamic dims); keep the command's output to its result."""
    logger = logging.getLogger("torch.onnx")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            yield
    finally:
        logger.setLevel(level)


def output_paths(output: str | os.PathLike, parts: list[str]) -> dict[str, Path]:
    """Where each part goes: `output` itself for one part, `<stem>.<part>.onnx` beside it for several."""
    output = Path(output)
    if len(parts) == 1:
        return {parts[0]: output}
    stem = output.name[: -len(".onnx")] if output.name.endswith(".onnx") else output.name
    return {part: output.with_name(f"{stem}.{part}.onnx") for part in parts}


def max_difference(model: InteractiveModel, path: str | os.PathLike, size: tuple[int, int] = (200, 264)) -> float:
    """Run the exported file in ONNX Runtime and the torch model on one random input of `size` (another size
    than the export's example, so that the dynamic axes are exercised) -> max |difference| of the outputs."""
    from fbrs.onnx.runtime import OnnxBackend

    backend = OnnxBackend(model, [path], threads=torch.get_num_threads())
    (part,) = backend.parts
    inputs = example_inputs(model, part, size, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = ExportedPart(model.eval(), part)(*inputs)
    expected = expected if isinstance(expected, tuple) else (expected,)
    actual = backend.run(part, *inputs)
    return max(float((a - e).abs().max()) for a, e in zip(actual, expected, strict=True))
