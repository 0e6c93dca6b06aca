"""A probe: does SAM's stability score (how much a mask changes when its logits threshold moves from -1 to +1;
the automatic mask generator of segment-anything filters on it) rate the decoder's outputs better than the IoU
head? Analysis only (the ground truth is read by replacing `SamNetwork` in fbrs.inference.sam_predictor for this
process, as benchmarks/sam_output_oracle.py does).

    python benchmarks/sam_stability_probe.py log heldout 400 work/stab_heldout.jsonl   # train-sam's held-out images
    python benchmarks/sam_stability_probe.py rules work/stab_heldout.jsonl

`log` runs the plain SAM loop (the shipped IoU head, 10 robot clicks) on held-out TRAINING objects (never an
evaluation set) and records at every click, for each of the decoder's four outputs (0: single-mask, 1-3:
multimask), SAM's IoU prediction, the stability score, the low-res area and the true IoU. `rules` scores
choices of the first click's multimask output (and of the output from the second click on) made by each rule
against the ground truth: mean true IoU of the chosen output, beside the oracle's.
"""

import dataclasses
import json
import sys
from pathlib import Path

import numpy as np
import torch

import fbrs.inference.sam_predictor as sp
from fbrs.evaluation.datasets import Sample
from fbrs.evaluation.metrics import iou
from fbrs.evaluation.protocol import evaluate_sample
from fbrs.inference.sam_network import SamNetwork
from fbrs.inference.sam_zoom import SamFrame, frame_probabilities
from fbrs.io_utils import file_sha256
from fbrs.models.sam.checkpoint import DEFAULT_ENCODER_PATH
from fbrs.models.sam.model import SamModel, load_default_sam_model
from fbrs.training.data import TrainingData
from fbrs.training.sam_decoder import StoredEmbeddings, load_sam_tune_config
from fbrs.training.sam_embeddings import EmbeddingCache

torch.set_num_threads(1)
STATE: dict = {"rows": []}


def stability(logits: torch.Tensor, offset: float = 1.0) -> float:
    """(L, L) logits -> |logits > offset| / |logits > -offset| (1 for an empty mask)."""
    outer = int((logits > -offset).sum())
    return float((logits > offset).sum()) / outer if outer else 1.0


class Logger(SamNetwork):
    def features_at(self, insertion, frame, points):
        features, context = super().features_at(insertion, frame, points)
        with torch.no_grad():
            masks = self.decoder.masks_from(insertion, features.detach(), context.prompt, context.token_side)
        outputs = []
        for k in range(masks.shape[1]):
            logits = masks[0, k]
            predicted = frame_probabilities(SamFrame(self.embedding), masks[:, k : k + 1], self.embedding.image_size,
                                            1024) > 0.5
            outputs.append({
                "pred": float(context.token_side.iou_predictions[0, k]), "stab": stability(logits),
                "stab2": stability(logits, 2.0), "area": int((logits > 0).sum()),
                "true": iou(STATE["gt"], predicted, STATE["ignore"]),
            })
        STATE["rows"].append({"name": STATE["name"], "click": context.prompt.num_points - 1,
                              "chosen": context.mask_index, "outputs": outputs})
        return features, context


def log(split: str, limit: int, out: Path) -> None:
    sp.SamNetwork = Logger
    config = load_sam_tune_config("configs/sam_decoder_tune.toml")
    cache = EmbeddingCache(config.run.embeddings, file_sha256(DEFAULT_ENCODER_PATH))
    data = TrainingData(dataclasses.replace(config.data, validation_max_objects=limit))
    if split != "heldout":
        raise SystemExit("only the held-out split is logged")
    objects = data.validation_objects(0, config.validation.min_object_area)
    objects = [o for o in objects if o.name.split("#", 1)[0] in cache]
    done = set()
    if out.is_file():
        done = {json.loads(line)["name"] for line in out.read_text().splitlines()}
    encoder = StoredEmbeddings(cache)
    predictor = sp.SamPredictor(SamModel(encoder, load_default_sam_model().decoder.eval(), cache_size=1))
    print(len(objects), "objects,", len(done), "done", flush=True)
    for item in objects:
        if item.name in done:
            continue
        encoder.expect(item.name.split("#", 1)[0])
        STATE.update(gt=item.gt, ignore=item.ignore, name=item.name, rows=[])
        with torch.no_grad():
            result = evaluate_sample(predictor, Sample(item.image, item.gt, item.ignore, item.name), max_clicks=10,
                                     stop_at_target=False)
        with out.open("a") as f:
            f.write(json.dumps({"name": item.name, "ious": [float(v) for v in result.ious],
                                "clicks": STATE["rows"]}) + "\n")


def rules(path: Path) -> None:
    records = [json.loads(line) for line in path.read_text().splitlines()]
    firsts = [r["clicks"][0]["outputs"][1:] for r in records]
    print(len(firsts), "first clicks")
    choosers = {
        "oracle": lambda o: max(range(3), key=lambda k: o[k]["true"]),
        "head": lambda o: max(range(3), key=lambda k: o[k]["pred"]),
        "stability": lambda o: max(range(3), key=lambda k: o[k]["stab"]),
        "largest": lambda o: max(range(3), key=lambda k: o[k]["area"]),
    }
    for weight in (0.25, 0.5, 1.0, 2.0):
        choosers[f"head+{weight}stab"] = lambda o, w=weight: max(
            range(3), key=lambda k: o[k]["pred"] + w * o[k]["stab"])
        choosers[f"head*stab^{weight}"] = lambda o, w=weight: max(
            range(3), key=lambda k: o[k]["pred"] * o[k]["stab"] ** w)
    for name, choose in choosers.items():
        chosen = [o[choose(o)]["true"] for o in firsts]
        share = np.mean(np.array(chosen) >= 0.85)
        print(f"first click  {name:16s} mean true IoU {np.mean(chosen):.3f}  >=0.85: {share:.3f}")
    later = [c for r in records for c in r["clicks"][1:]]
    wanted = [c for c in later if max(o["true"] for o in c["outputs"][1:]) > c["outputs"][0]["true"] + 0.1]
    print(len(later), "later clicks;", len(wanted), "where a multimask output is > 0.1 better than output 0")
    for name, key in (("head", "pred"), ("stab", "stab")):
        for margin in (0.05, 0.1, 0.2):
            gains, switches, wrong = [], 0, 0
            for c in later:
                o = c["outputs"]
                best = max(range(4), key=lambda k: o[k][key])
                index = best if o[best][key] - o[0][key] > margin else 0
                gains.append(o[index]["true"] - o[0]["true"])
                switches += index != 0
                wrong += index != 0 and o[index]["true"] < o[0]["true"]
            print(f"later  {name} margin {margin}: switches {switches}, worse {wrong}, mean gain {np.mean(gains):+.4f}")
    # stability of collapsed single-mask outputs against the others
    drops = [c for c in later if c["outputs"][0]["true"] < max(o["true"] for o in c["outputs"]) - 0.3]
    if drops:
        best = [max(c["outputs"], key=lambda o: o["true"])["stab"] for c in drops]
        print("collapse-like answers", len(drops), "stab of output 0",
              np.mean([c["outputs"][0]["stab"] for c in drops]), "of the best", np.mean(best))
    print("all later answers: stab of output 0", np.mean([c["outputs"][0]["stab"] for c in later]))


if __name__ == "__main__":
    if sys.argv[1] == "log":
        log(sys.argv[2], int(sys.argv[3]), Path(sys.argv[4]))
    else:
        rules(Path(sys.argv[2]))
