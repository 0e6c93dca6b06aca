"""How much could a better choice among the decoder's four outputs give from the second click on? An upper
bound, with the ground truth (analysis only: it motivated the output switch, fbrs.inference.sam_network).

    python benchmarks/sam_output_oracle.py plain,oracle4,oracle4m0.1,oracle_sticky,sticky,head4 work/sam_oracle.jsonl

Policies (mask input fed back, the shipped IoU head choosing the first click's multimask output): plain
(output 0, the single-mask output, from click 2 on: SAM's rule), oracle4 (the output with the best true
IoU), oracle4m<margin> (that output only where it beats output 0's true IoU by more than the margin),
oracle_sticky[m<margin>] (the better of output 0 and the first click's output), sticky (always the first
click's output), head4 (the IoU head's highest prediction among the four). On the held-out objects of
`fbrs train-sam` (their embeddings from `fbrs train-sam embed`), the protocol's robot, 20 clicks; resumable
through the output file. The policy is put into the predictor by replacing `SamNetwork` in
fbrs.inference.sam_predictor for this process (it reads the ground truth, which no real predictor has).
"""

import json
import sys
from pathlib import Path

import numpy as np
import torch

import fbrs.inference.sam_predictor as sp
from fbrs.evaluation.datasets import Sample
from fbrs.evaluation.metrics import curve_metrics, iou
from fbrs.evaluation.protocol import evaluate_sample
from fbrs.inference.sam_network import SamContext, SamNetwork
from fbrs.inference.sam_zoom import SamFrame, frame_probabilities
from fbrs.io_utils import file_sha256
from fbrs.models.sam.checkpoint import DEFAULT_ENCODER_PATH
from fbrs.models.sam.model import SamModel, load_default_sam_model
from fbrs.training.data import TrainingData
from fbrs.training.sam_decoder import StoredEmbeddings, load_sam_tune_config
from fbrs.training.sam_embeddings import EmbeddingCache

torch.set_num_threads(1)
STATE = {"policy": "plain", "gt": None, "ignore": None, "first": 0, "log": []}


def true_iou(embedding, low_res) -> float:
    """IoU with the current object's ground truth of (1, 1, L, L) low-res logits, at SAM's threshold (logits > 0)."""
    predicted = frame_probabilities(SamFrame(embedding), low_res, embedding.image_size, 1024) > 0.5
    return iou(STATE["gt"], predicted, STATE["ignore"])


class ChoiceNetwork(SamNetwork):
    def features_at(self, insertion, frame, points):
        features, context = super().features_at(insertion, frame, points)
        clicks = context.prompt.num_points - 1
        if clicks == 1:
            STATE["first"] = context.mask_index
            return features, context
        policy = STATE["policy"]
        if policy == "plain":
            return features, context
        with torch.no_grad():
            masks = self.decoder.masks_from(insertion, features.detach(), context.prompt, context.token_side)
        if policy == "sticky":
            index = STATE["first"]
        elif policy == "head4":
            index = int(torch.argmax(context.token_side.iou_predictions[0]))
        else:
            base, _, margin = policy.replace("oracle_sticky", "oraclesticky").partition("m")
            margin = float(margin or 0)
            candidates = range(masks.shape[1]) if base == "oracle4" else sorted({0, STATE["first"]})
            ious = {i: true_iou(self.embedding, masks[:, i : i + 1]) for i in candidates}
            index = max(ious, key=ious.get)
            if ious[index] < ious[0] + margin:
                index = 0
            STATE["log"].append((clicks, index, ious))
        return features, SamContext(context.prompt, context.token_side, index)


sp.SamNetwork = ChoiceNetwork


def main() -> None:
    policies = sys.argv[1].split(",")
    out = Path(sys.argv[2])
    limit = int(sys.argv[3]) if len(sys.argv) > 3 else 60
    config = load_sam_tune_config("configs/sam_decoder_tune.toml")
    cache = EmbeddingCache(config.run.embeddings, file_sha256(DEFAULT_ENCODER_PATH))
    data = TrainingData(config.data)
    objects = data.validation_objects(0, config.validation.min_object_area)[: config.validation.max_objects]
    objects = [o for o in objects if o.name.split("#", 1)[0] in cache][:limit]
    decoder = load_default_sam_model().decoder.eval()
    encoder = StoredEmbeddings(cache)
    done = {}
    if out.is_file():
        for line in out.read_text().splitlines():
            r = json.loads(line)
            done[(r["policy"], r["name"])] = r["ious"]
    for policy in policies:
        STATE["policy"] = policy
        predictor = sp.SamPredictor(SamModel(encoder, decoder, cache_size=1))
        curves = []
        for item in objects:
            key = (policy, item.name)
            if key not in done:
                encoder.expect(item.name.split("#", 1)[0])
                STATE["gt"], STATE["ignore"] = item.gt, item.ignore
                with torch.no_grad():
                    result = evaluate_sample(predictor, Sample(item.image, item.gt, item.ignore, item.name),
                                             max_clicks=20, stop_at_target=False)
                done[key] = [float(v) for v in result.ious]
                with out.open("a") as f:
                    f.write(json.dumps({"policy": policy, "name": item.name, "ious": done[key]}) + "\n")
            curves.append(done[key])
        m = curve_metrics(curves, 20)
        iou = np.mean(curves, axis=0)
        print(policy, len(curves), {k: round(float(v), 3) for k, v in m.items()},
              "iou@1/2/3/5", [round(float(iou[k]), 3) for k in (0, 1, 2, 4)], flush=True)


if __name__ == "__main__":
    main()
