"""The Trainer and `fbrs train` / `fbrs pack-data` end to end with the tiny model on a few real images."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import pytest
import torch

from fbrs.cli import main
from fbrs.errors import ConfigError
from fbrs.models import load_model
from fbrs.models.checkpoint import read_metadata
from fbrs.training.config import load_config
from fbrs.training.trainer import Trainer, learning_rate_factor
from tests.conftest import copy_training_subset

REPO = Path(__file__).resolve().parents[1]
TINY_CONFIG = REPO / "configs" / "tiny_test.toml"
CCP_IMAGES = ("0001", "0003", "0005", "0007", "0009", "0011", "0013", "0015")


@pytest.fixture(scope="module")
def person_folder(data_dir: Path, tmp_path_factory) -> Path:
    return copy_training_subset(data_dir, "ccp_person", CCP_IMAGES, tmp_path_factory.mktemp("shared_copy"))


def _config(folder: Path, output: Path, *overrides: str):
    return load_config(
        TINY_CONFIG,
        [f'data.sources=[{{path="{folder}"}}]', f'run.output_dir="{output}"', *overrides],
    )


def _read_csv(path: Path) -> list[dict[str, str]]:
    with path.open() as handle:
        return list(csv.DictReader(handle))


def test_cli_train_runs_end_to_end_and_writes_a_loadable_model(person_folder, tmp_path, capsys):
    output = tmp_path / "run"
    code = main(
        [
            "train",
            str(TINY_CONFIG),
            "--set",
            f'data.sources=[{{path="{person_folder}"}}]',
            "--output-dir",
            str(output),
            "--device",
            "cpu",
            "--no-progress",
        ]
    )
    assert code == 0
    train_rows = _read_csv(output / "train_log.csv")
    assert [int(row["step"]) for row in train_rows] == [1, 2, 3, 4]  # 2 epochs x 8 samples / batch 4
    assert [float(row["lr"]) for row in train_rows] == pytest.approx([5e-4, 5e-4, 5e-5, 5e-5])  # drop at epoch 1
    validation_rows = _read_csv(output / "validation_log.csv")
    assert [int(row["step"]) for row in validation_rows] == [0, 2, 4]
    assert all(0.0 <= float(row["iou@1"]) <= 1.0 for row in validation_rows)
    model = load_model(output / "best.safetensors")
    assert model.config.name == "tiny_test"
    metadata = read_metadata(output / "best.safetensors")
    assert metadata["training_config"]["name"] == "tiny_test" and "iou@1" in metadata["validation"]
    logits = model(torch.zeros(1, 3, 32, 48), torch.tensor([[[10.0, 10.0], [-1.0, -1.0]]]))
    assert logits.shape == (1, 1, 32, 48)
    assert "best model:" in capsys.readouterr().out


def test_resume_after_a_crash_mid_epoch_gives_the_same_weights(person_folder, tmp_path, monkeypatch):
    overrides = ("data.samples_per_epoch=16", "run.checkpoint_every_minutes=0.0")
    straight = Trainer(_config(person_folder, tmp_path / "straight", *overrides), progress=False)
    straight.fit()

    calls = {"count": 0}
    original_step = Trainer._train_step

    def crash_on_third_step(self, batch):
        calls["count"] += 1
        if calls["count"] == 3:
            raise KeyboardInterrupt("simulated crash")
        return original_step(self, batch)

    monkeypatch.setattr(Trainer, "_train_step", crash_on_third_step)
    with pytest.raises(KeyboardInterrupt):
        Trainer(_config(person_folder, tmp_path / "resumed", *overrides), progress=False).fit()
    monkeypatch.setattr(Trainer, "_train_step", original_step)
    resumed = Trainer(_config(person_folder, tmp_path / "resumed", *overrides), resume=True, progress=False).setup()
    assert (resumed.epoch, resumed.position, resumed.step) == (0, 8, 2)
    resumed.fit()

    assert resumed.step == straight.step == 8
    for key, value in straight.model.state_dict().items():
        assert torch.equal(value, resumed.model.state_dict()[key]), key


def test_init_from_continues_a_saved_model_and_records_its_lineage(person_folder, tmp_path):
    first = Trainer(_config(person_folder, tmp_path / "first"), progress=False)
    first.fit()
    parent = tmp_path / "first" / "best.safetensors"
    parent_weights = load_model(parent).state_dict()
    second = Trainer(_config(person_folder, tmp_path / "second", f'model.init_from="{parent}"'), progress=False)
    second.setup()
    for key, value in second.model.state_dict().items():  # starts from the saved weights, not a fresh init
        assert torch.equal(value.cpu(), parent_weights[key].to(value.dtype)), key
    second.fit()
    child = tmp_path / "second" / "best.safetensors"
    third = Trainer(_config(person_folder, tmp_path / "third", f'model.init_from="{child}"'), progress=False)
    third.fit()

    parent_metadata = read_metadata(parent)
    assert "lineage" not in parent_metadata  # trained from scratch
    lineage = read_metadata(tmp_path / "third" / "best.safetensors")["lineage"]
    assert [entry["file"] for entry in lineage] == ["best.safetensors", "best.safetensors"]
    assert lineage[0]["step"] == parent_metadata["step"]
    assert lineage[0]["validation_score"] == pytest.approx(parent_metadata["validation"]["score"])
    assert lineage[0]["recipe"]["name"] == "tiny_test" and lineage[0]["recipe"]["batch_size"] == 4
    assert lineage[1]["step"] == read_metadata(child)["step"]


def test_training_steps_fit_a_fixed_batch(person_folder, tmp_path):
    trainer = Trainer(_config(person_folder, tmp_path / "overfit", "optimizer.lr=5e-3"), progress=False).setup()
    trainer._set_learning_rate()
    batch = torch.utils.data.default_collate([trainer.dataset[i] for i in range(4)])
    losses = [trainer._train_step(batch) for _ in range(40)]
    assert losses[-1] < 0.7 * losses[0]


def test_backbone_learns_at_a_tenth_of_the_rate(person_folder, tmp_path):
    trainer = Trainer(_config(person_folder, tmp_path / "groups"), progress=False).setup()
    trainer._set_learning_rate()
    backbone_group, head_group = trainer.optimizer.param_groups
    assert backbone_group["lr"] == pytest.approx(0.1 * head_group["lr"])
    backbone_ids = {id(p) for p in trainer.model.feature_extractor.backbone.parameters()}
    assert {id(p) for p in backbone_group["params"]} == backbone_ids
    assert not backbone_ids & {id(p) for p in head_group["params"]}


def test_schedules():
    paper = load_config(REPO / "configs" / "paper_r34.toml")
    assert learning_rate_factor(paper, 99.9 / 120, 10**6) == 1.0
    assert learning_rate_factor(paper, 100.0 / 120, 10**6) == pytest.approx(0.1)
    default = load_config(REPO / "configs" / "default_mnv2.toml")
    factors = [learning_rate_factor(default, p, 10**6) for p in (0.0, 0.5, 1.0)]
    assert factors[0] == 1.0 and factors[1] == pytest.approx((1 + default.schedule.min_factor) / 2)
    assert factors[2] == pytest.approx(default.schedule.min_factor)
    assert learning_rate_factor(default, 0.0, 0) == pytest.approx(1 / default.schedule.warmup_steps)


def test_cli_reports_user_errors(person_folder, tmp_path, capsys):
    assert main(["train", str(tmp_path / "missing.toml")]) == 2
    assert "config file not found" in capsys.readouterr().err
    code = main(
        ["train", str(TINY_CONFIG), "--set", f'data.sources=[{{path="{person_folder}"}}]']
        + ["--output-dir", str(tmp_path / "nothing"), "--resume"]
    )
    assert code == 2
    assert "cannot resume" in capsys.readouterr().err


def test_cli_pack_data_writes_a_pack_that_trains(person_folder, tmp_path, capsys):
    pack = tmp_path / "train.zip"
    assert main(["pack-data", str(person_folder), "-o", str(pack), "--max-side", "96", "--no-progress"]) == 0
    assert f"{len(CCP_IMAGES)} images" in capsys.readouterr().out
    config = load_config(
        TINY_CONFIG,
        [f'data.sources=[{{path="{pack}", kind="pack"}}]', f'run.output_dir="{tmp_path / "run"}"', "schedule.epochs=1"],
    )
    trainer = Trainer(config, progress=False)
    trainer.fit()
    assert trainer.step == 2 and (tmp_path / "run" / "last.pt").is_file()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_training_with_mixed_precision(person_folder, tmp_path):
    trainer = Trainer(_config(person_folder, tmp_path / "cuda", "run.device=cuda"), progress=False).setup()
    assert trainer.amp_dtype in (torch.bfloat16, torch.float16)
    trainer.fit()
    assert trainer.step == 4 and next(trainer.model.parameters()).is_cuda


def test_training_commands_need_no_web_or_onnx_stack(tmp_path):
    """A bare GPU box (torch + numpy + scipy + pillow) runs `fbrs train`: building the `fbrs` parser must not
    import FastAPI, uvicorn, PyMaxflow or ONNX. (Session 5's first GPU call failed on exactly this.)"""
    import subprocess
    import sys

    script = (
        "import sys\n"
        "for name in ('fastapi', 'uvicorn', 'starlette', 'multipart', 'maxflow', 'onnx', 'onnxruntime'):\n"
        "    sys.modules[name] = None  # any import of these now raises ImportError\n"
        "from fbrs.cli import build_parser\n"
        "args = build_parser().parse_args(['train', 'recipe.toml', '--device', 'cpu'])\n"
        "print(args.command, args.handler.__module__)\n"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["train", "fbrs.training.cli"]


def test_iterative_click_sampling_trains_and_keeps_batchnorm_statistics_out_of_the_extra_passes(
    person_folder, tmp_path, monkeypatch
):
    overrides = ("clicks.iterative_max=2", "clicks.iterative_probability=1.0")
    trainer = Trainer(_config(person_folder, tmp_path / "iterative", *overrides), progress=False).setup()
    seen = []
    original_forward = type(trainer.model).forward

    def recording_forward(model, image, points):
        seen.append((model.training, int((points[:, :, 0] >= 0).sum())))
        return original_forward(model, image, points)

    monkeypatch.setattr(type(trainer.model), "forward", recording_forward)
    batch = torch.utils.data.default_collate([trainer.dataset[i] for i in range(4)])
    trainer._set_learning_rate()
    loss = trainer._train_step(batch)
    assert math.isfinite(loss)
    passes = [entry for entry in seen if not entry[0]]
    assert 1 <= len(passes) <= 2 and seen[-1][0]  # eval-mode extra passes, then the training pass
    # Each pass adds a click per sample with errors and a free row: the trained-on batch has more clicks.
    assert seen[-1][1] > seen[0][1]
    with pytest.raises(ConfigError, match="iterative"):
        Trainer(_config(person_folder, tmp_path / "bad", "clicks.iterative_probability=1.5"), progress=False)


def test_constructing_a_trainer_changes_no_global_state(person_folder, tmp_path):
    """Trainer(config) only reads the config; seeds, threads and files wait for setup() (issue 15, item 6)."""
    import random

    import numpy as np

    torch.manual_seed(123)
    before = (torch.get_rng_state(), np.random.get_state()[1].copy(), random.getstate(), torch.get_num_threads())
    output = tmp_path / "quiet"
    trainer = Trainer(_config(person_folder, output, "run.threads=2", "run.seed=7"), progress=False)
    after = (torch.get_rng_state(), np.random.get_state()[1].copy(), random.getstate(), torch.get_num_threads())
    assert torch.equal(before[0], after[0]) and np.array_equal(before[1], after[1])
    assert before[2:] == after[2:] and not output.exists()
    trainer.setup()
    assert torch.get_num_threads() == 2 and (output / "config.json").is_file()
    metrics = trainer.run_validation()  # the logs exist from setup on, not only inside fit()
    assert "iou@1" in metrics and (output / "validation_log.csv").is_file()
    assert trainer.setup() is trainer  # once only


def test_prev_mask_training_widens_the_parent_and_feeds_the_last_pass(person_folder, tmp_path, monkeypatch):
    first = Trainer(_config(person_folder, tmp_path / "parent"), progress=False)
    first.fit()
    parent = tmp_path / "parent" / "best.safetensors"
    overrides = (
        f'model.init_from="{parent}"',
        "model.prev_mask_input=true",
        "clicks.iterative_max=2",
        "clicks.iterative_probability=1.0",
    )
    trainer = Trainer(_config(person_folder, tmp_path / "child", *overrides), progress=False).setup()
    assert trainer.model.config.prev_mask_input
    assert not trainer.model.rgb_conv[0].weight[:, 5].any()  # the new channel starts at zero weight
    batch = torch.utils.data.default_collate([trainer.dataset[i] for i in range(4)])
    images, points = batch["image"], batch["points"]
    parent_model = load_model(parent).float().eval()
    trainer.model.eval()
    with torch.no_grad():  # widened with a zero weight: the parent's outputs, whatever the previous mask
        expected = parent_model(images, points)
        assert torch.allclose(trainer.model(images, points, torch.rand(4, 1, *images.shape[2:])), expected, atol=1e-5)
    trainer.model.train()
    seen = []
    original_forward = type(trainer.model).forward

    def recording_forward(model, image, points, prev_mask=None):
        seen.append((model.training, None if prev_mask is None else prev_mask.clone()))
        return original_forward(model, image, points, prev_mask)

    monkeypatch.setattr(type(trainer.model), "forward", recording_forward)
    trainer._set_learning_rate()
    assert math.isfinite(trainer._train_step(batch))
    passes, final = seen[:-1], seen[-1]
    assert passes and all(not training for training, _ in passes) and passes[0][1] is None and final[0]
    assert final[1] is not None and final[1].shape == (4, 1, *images.shape[2:])
    assert 0.0 <= float(final[1].min()) and float(final[1].max()) <= 1.0
    if len(passes) == 2:  # the second pass saw the first pass's prediction
        assert passes[1][1] is not None
    monkeypatch.undo()
    trainer.fit()
    child = load_model(tmp_path / "child" / "best.safetensors")
    assert child.config.prev_mask_input
    with pytest.raises(ConfigError, match="prev_mask_input"):
        Trainer(
            _config(person_folder, tmp_path / "bad", f'model.init_from="{tmp_path / "child" / "best.safetensors"}"'),
            progress=False,
        ).setup()


def _batchnorm_tensors(model: torch.nn.Module) -> dict[str, dict[str, torch.Tensor]]:
    """Running statistics and affine parameters of every BatchNorm layer, copied."""
    layers = {
        name: module
        for name, module in model.named_modules()
        if isinstance(module, torch.nn.modules.batchnorm._BatchNorm)
    }
    assert layers, "the tiny model has BatchNorm layers"
    return {
        "statistics": {
            f"{name}.{key}": getattr(layer, key).clone()
            for name, layer in layers.items()
            for key in ("running_mean", "running_var", "num_batches_tracked")
        },
        "affine": {
            f"{name}.{key}": getattr(layer, key).detach().clone()
            for name, layer in layers.items()
            for key in ("weight", "bias")
        },
    }


def _changed(before: dict[str, torch.Tensor], after: dict[str, torch.Tensor]) -> list[str]:
    return [key for key in before if not torch.equal(before[key], after[key])]


def test_freeze_batchnorm_keeps_running_statistics_through_training_validation_and_resume(person_folder, tmp_path):
    # Validation after every step switches the model to eval and back; so do the iterative passes (on in the
    # resumed part): each path must leave BatchNorm frozen on its own.
    overrides = ("validation.every_steps=1", "run.checkpoint_every_minutes=0.0")
    for frozen in (False, True):
        flag = f"model.freeze_batchnorm={str(frozen).lower()}"
        trainer = Trainer(_config(person_folder, tmp_path / f"frozen_{frozen}", *overrides, flag), progress=False)
        before = _batchnorm_tensors(trainer.setup().model)
        trainer.fit()
        after = _batchnorm_tensors(trainer.model)
        assert _changed(before["affine"], after["affine"])  # the scale and shift train either way
        if not frozen:
            assert len(_changed(before["statistics"], after["statistics"])) == len(before["statistics"])
            continue
        assert _changed(before["statistics"], after["statistics"]) == []
        # A resumed run (two more epochs from last.pt, with iterative click passes) keeps them frozen too.
        more = (*overrides, flag, "schedule.epochs=4", "clicks.iterative_max=1", "clicks.iterative_probability=1.0")
        resumed = Trainer(_config(person_folder, tmp_path / "frozen_True", *more), resume=True, progress=False)
        resumed.fit()
        assert resumed.step == 8
        assert _changed(before["statistics"], _batchnorm_tensors(resumed.model)["statistics"]) == []


def test_freeze_batchnorm_affine_keeps_the_scale_and_shift_and_trains_the_rest(person_folder, tmp_path):
    overrides = ("model.freeze_batchnorm=true", "model.freeze_batchnorm_affine=true")
    trainer = Trainer(_config(person_folder, tmp_path / "affine", *overrides), progress=False).setup()
    before = _batchnorm_tensors(trainer.model)
    convolutions = [p.detach().clone() for p in trainer.model.parameters() if p.requires_grad]
    trainer.fit()
    after = _batchnorm_tensors(trainer.model)
    assert _changed(before["statistics"], after["statistics"]) == []
    assert _changed(before["affine"], after["affine"]) == []
    trained = [p for p in trainer.model.parameters() if p.requires_grad]
    assert any(not torch.equal(old, new) for old, new in zip(convolutions, trained, strict=True))
    with pytest.raises(ConfigError, match="freeze_batchnorm"):
        _config(person_folder, tmp_path / "bad", "model.freeze_batchnorm_affine=true")
