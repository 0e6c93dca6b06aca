"""A probe for the output switch (benchmarks/results/sam_output_switch.md, section 4): can the multimask outputs'
gain over the single-mask output be rated from the masks themselves, rather than by the IoU head?

    python benchmarks/sam_switch_probe.py log train 200 work/feat_train0.json 0    # random training objects
    python benchmarks/sam_switch_probe.py log train 200 work/feat_train1.json 1
    python benchmarks/sam_switch_probe.py log heldout 60 work/feat_heldout.json    # train-sam's held-out objects
    python benchmarks/sam_switch_probe.py fit work/feat_train0.json,work/feat_train1.json work/feat_heldout.json

    python benchmarks/sam_switch_probe.py closed work/feat_train0.json,... 0.1 work/closed.json  # closed loop

`log` runs the plain SAM loop (10 robot clicks, the shipped IoU head) and records, at every click from the
second on, features of each of the four outputs and their true IoUs (the ground truth is read by replacing
`SamNetwork` in fbrs.inference.sam_predictor for this process: analysis only). `fit` fits a ridge regression
and a small MLP of each multimask output's IoU gain over the single-mask output on the first files and scores
the switch decisions (switch above a predicted gain of 0.1 / 0.15) on the second. `closed` fits the MLP and runs
the held-out objects with it deciding the switch (10 clicks; a margin of 1e9 is the plain loop).
"""

import json
import sys

import numpy as np
import torch

import fbrs.inference.sam_predictor as sp
from fbrs.evaluation.datasets import Sample
from fbrs.evaluation.metrics import iou
from fbrs.evaluation.protocol import evaluate_sample
from fbrs.inference.sam_guard import violated_clicks
from fbrs.inference.sam_network import SamContext, SamNetwork
from fbrs.inference.sam_zoom import SamFrame, clicks_in_frame, frame_probabilities
from fbrs.io_utils import file_sha256
from fbrs.models.sam.checkpoint import DEFAULT_ENCODER_PATH
from fbrs.models.sam.model import SamModel, load_default_sam_model
from fbrs.training.data import TrainingData, far_unlabelled_background
from fbrs.training.sam_decoder import StoredEmbeddings, load_sam_tune_config
from fbrs.training.sam_embeddings import EmbeddingCache

STATE = {}
ROWS = []


def true_iou(embedding, low_res) -> float:
    """IoU with the current object's ground truth of (1, 1, L, L) low-res logits, at SAM's threshold (logits > 0)."""
    predicted = frame_probabilities(SamFrame(embedding), low_res, embedding.image_size, 1024) > 0.5
    return iou(STATE["gt"], predicted, STATE["ignore"])


def mask_overlap(a, b):
    """A feature: IoU of two low-res masks, 0 for two empty ones (metrics.iou says 1; the logged rows use 0)."""
    return float((a & b).sum() / max((a | b).sum(), 1))


class Logger(SamNetwork):
    def features_at(self, insertion, frame, points):
        features, context = super().features_at(insertion, frame, points)
        n = context.prompt.num_points - 1
        if n >= 2 and self.mask_prompt is not None:
            with torch.no_grad():
                masks = self.decoder.masks_from(insertion, features.detach(), context.prompt, context.token_side)
            predictor = STATE["predictor"]
            size = self.decoder.config.low_res_size
            clicks = clicks_in_frame(SamFrame(self.embedding), predictor._clicks, 1024, size)
            prev = (self.mask_prompt[0, 0] > 0).numpy()
            out = []
            for k in range(masks.shape[1]):
                m = (masks[0, k] > 0).numpy()
                logits = masks[:, k : k + 1]
                last = clicks[-1]
                y = int(min(max(round(last.y), 0), size - 1))
                x = int(min(max(round(last.x), 0), size - 1))
                out.append({
                    "pred": float(context.token_side.iou_predictions[0, k]),
                    "iou_prev": mask_overlap(m, prev), "area": float(m.sum()),
                    "violated": violated_clicks(logits, clicks),
                    "new_ok": bool(m[y, x] == last.is_positive), "true": true_iou(self.embedding, logits),
                    "iou_out0": mask_overlap(m, (masks[0, 0] > 0).numpy()),
                })
            row = {"name": STATE["name"], "click": n, "positive": bool(clicks[-1].is_positive),
                   "prev_area": float(prev.sum()), "outputs": out}
            ROWS.append(row)
            rater = STATE.get("rater")
            if rater is not None:  # closed loop: switch where the rater predicts a gain above the margin
                gains = rater([row])[0]
                if gains.max() > STATE["margin"]:
                    context = SamContext(context.prompt, context.token_side, int(gains.argmax()) + 1)
        return features, context


def log_rows(argv: list[str]) -> None:
    torch.set_num_threads(1)
    sp.SamNetwork = Logger  # this process only: the logger reads the ground truth
    which, count, out = argv[0], int(argv[1]), argv[2]
    config = load_sam_tune_config("configs/sam_decoder_tune.toml")
    cache = EmbeddingCache(config.run.embeddings, file_sha256(DEFAULT_ENCODER_PATH))
    data = TrainingData(config.data)
    objects = []
    if which == "heldout":
        for o in data.validation_objects(0, 2500)[:count]:
            objects.append((o.name, o.image, o.gt, o.ignore))
    else:
        rng = np.random.default_rng(int(argv[3]) if len(argv) > 3 else 0)
        weights = data.weights / data.weights.sum()
        while len(objects) < count:
            s = int(rng.choice(len(weights), p=weights))
            records = [r for r in data.train_records[s] if r.source in cache]
            record = records[int(rng.integers(len(records)))]
            oid = record.object_ids[int(rng.integers(len(record.object_ids)))]
            image, instances, ignore = data.read(s, record.name)
            gt = instances == oid
            if gt.sum() < 2500:
                continue
            band = data.config.sources[s].background_band
            if band > 0:
                ignore = ignore | far_unlabelled_background(instances, gt, band)
            objects.append((record.source + "#" + str(oid), image, gt, ignore))
    encoder = StoredEmbeddings(cache)
    predictor = sp.SamPredictor(SamModel(encoder, load_default_sam_model().decoder, cache_size=1))
    STATE["predictor"] = predictor
    for name, image, gt, ignore in objects:
        encoder.expect(name.split("#", 1)[0])
        STATE.update(gt=gt, ignore=ignore, name=name)
        with torch.no_grad():
            result = evaluate_sample(predictor, Sample(image, gt, ignore, name), max_clicks=10, stop_at_target=False)
        STATE.setdefault("curves", []).append([float(v) for v in result.ious])
    json.dump(ROWS, open(out, "w"))


def features(row, k):
    o, z = row["outputs"][k], row["outputs"][0]
    prev = max(row["prev_area"], 1.0)
    pos = 1.0 if row["positive"] else 0.0
    f = [
        1.0,
        o["pred"] - z["pred"], z["pred"],
        o["iou_prev"] - z["iou_prev"], z["iou_prev"],
        np.log((z["area"] + 1) / prev), np.log((o["area"] + 1) / prev),
        o["violated"] - z["violated"], float(o["new_ok"]) - float(z["new_ok"]),
        o["iou_out0"], 1.0 / row["click"], pos,
    ]
    f += [pos * f[3], pos * f[5], f[4] * f[3], (1 - pos) * f[3], (1 - pos) * f[5]]
    return f


def design(rows):
    X, Y, G = [], [], []
    for r in rows:
        for k in (1, 2, 3):
            X.append(features(r, k) + [float(k == j) for j in (1, 2, 3)])
            Y.append(r["outputs"][k]["true"] - r["outputs"][0]["true"])
            G.append(len(G) // 3)
    return np.array(X), np.array(Y)


def fit(rows, lam=1.0):
    X, Y = design(rows)
    mean, std = X.mean(0), X.std(0) + 1e-9
    mean[0], std[0] = 0, 1
    Xn = (X - mean) / std
    w = np.linalg.solve(Xn.T @ Xn + lam * np.eye(X.shape[1]), Xn.T @ Y)
    return w, mean, std


def evaluate(rows, model, margin):
    w, mean, std = model
    X, Y = design(rows)
    pred = (((X - mean) / std) @ w).reshape(-1, 3)
    gain = Y.reshape(-1, 3)
    best = pred.argmax(1)
    fire = pred.max(1) > margin
    got = np.where(fire, gain[np.arange(len(gain)), best], 0.0)
    want = gain.max(1) > 0.1
    return dict(fires=int(fire.sum()), wanted=int(want.sum()), hit=int((fire & want).sum()),
                harmful=int((got < -0.05).sum()), mean_gain=float(got.sum() / len(got)),
                oracle_gain=float(np.where(want, gain.max(1), 0).sum() / len(got)))


def fit_mlp(train: list[dict], epochs: int = 600, seed: int = 0):
    """A 2 x 32 MLP of the gain (features standardised on `train`) -> a function rows -> (N, 3) predicted gains."""
    torch.manual_seed(seed)
    x, y = design(train)
    mean, std = x.mean(0), x.std(0) + 1e-9
    mean[0], std[0] = 0, 1

    def inputs(a: np.ndarray) -> torch.Tensor:
        return torch.tensor((a - mean) / std, dtype=torch.float32)

    net = torch.nn.Sequential(torch.nn.Linear(x.shape[1], 32), torch.nn.ReLU(), torch.nn.Linear(32, 32),
                              torch.nn.ReLU(), torch.nn.Linear(32, 1))
    optimizer = torch.optim.AdamW(net.parameters(), lr=3e-3, weight_decay=1e-3)
    xt, yt = inputs(x), torch.tensor(y, dtype=torch.float32)[:, None]
    for _ in range(epochs):
        order = torch.randperm(len(xt))
        for start in range(0, len(xt), 256):
            batch = order[start : start + 256]
            loss = ((net(xt[batch]) - yt[batch]) ** 2).mean()
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()

    def predict(rows: list[dict]) -> np.ndarray:
        with torch.no_grad():
            return net(inputs(design(rows)[0]))[:, 0].numpy().reshape(-1, 3)

    return predict


def decisions(rows: list[dict], predicted: np.ndarray, margin: float) -> dict:
    gain = design(rows)[1].reshape(-1, 3)
    best, fire = predicted.argmax(1), predicted.max(1) > margin
    got = np.where(fire, gain[np.arange(len(gain)), best], 0.0)
    want = gain.max(1) > 0.1
    return {"switches": int(fire.sum()), "wanted": int(want.sum()), "hit": int((fire & want).sum()),
            "losing": int((got < -0.05).sum()), "mean_gain": round(float(got.mean()), 4),
            "oracle_gain": round(float(np.where(want, gain.max(1), 0).mean()), 4)}


def fit_and_score(argv: list[str]) -> None:
    train = sum((json.loads(open(path).read()) for path in argv[0].split(",")), [])
    held = json.loads(open(argv[1]).read())
    print(f"{len(train)} training decisions, {len(held)} held-out")
    for margin in (0.1, 0.15):
        print("ridge", margin, evaluate(held, fit(train, 30.0), margin))
    predict = fit_mlp(train)
    for margin in (0.1, 0.15):
        print("mlp", margin, decisions(held, predict(held), margin))


def closed_loop(argv: list[str]) -> None:
    """closed TRAIN_FILES MARGIN OUT.json: fit the MLP on TRAIN_FILES, then run the held-out objects with the
    switch it rates (the `log` loop with the rater deciding) and print NoC@85/90, #>=20 and collapses."""
    from fbrs.evaluation.metrics import curve_metrics

    train = sum((json.loads(open(path).read()) for path in argv[0].split(",")), [])
    STATE["rater"], STATE["margin"] = fit_mlp(train), float(argv[1])
    log_rows(["heldout", "60", argv[2]])
    print(argv[1], {k: round(float(v), 3) for k, v in curve_metrics(STATE["curves"], 10).items()})


if __name__ == "__main__":
    {"log": log_rows, "fit": fit_and_score, "closed": closed_loop}[sys.argv[1]](sys.argv[2:])
