"""ONNX export (`fbrs export-onnx`) and the ONNX Runtime backend of the Predictor, on the tiny test model.

onnx, onnxscript and onnxruntime come with the `onnx` extra, which `make test` installs."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

import fbrs
from fbrs.cli import main
from fbrs.errors import CheckpointError, ConfigError, FbrsError, MissingDependencyError
from fbrs.inference.onnx_backend import OnnxBackend
from fbrs.models.onnx_export import INSTALL_HINT, ExportedPart, export_onnx, output_paths, require_modules

# Exported once per module (tracing takes seconds); after_backbone covers the two-output part.
PARTS = ("full", "after_backbone", "after_aspp")
CLICKS = [(30, 40, True), (5, 5, False), (20, 50, True), (50, 12, False), (40, 70, True)]
# ONNX Runtime fuses BatchNorm into the convolutions and sums in its own order: not bit-identical.
LOGIT_TOLERANCE = 1e-4
PROB_TOLERANCE = 1e-5


@pytest.fixture(scope="module")
def exported(tiny_model, tmp_path_factory):
    folder = tmp_path_factory.mktemp("onnx")
    return {part: export_onnx(tiny_model, folder / f"tiny.{part}.onnx", part) for part in PARTS}


@pytest.fixture(scope="module")
def backend(tiny_model, exported):
    return OnnxBackend(tiny_model, list(exported.values()), threads=1)


@pytest.fixture(scope="module")
def image():
    rng = np.random.default_rng(0)
    picture = rng.integers(0, 60, size=(61, 83, 3), dtype=np.uint8)  # odd sides: not the export's example size
    picture[15:45, 20:60] = 220
    return picture


@pytest.mark.parametrize("part", PARTS)
@pytest.mark.parametrize(("batch", "size"), [(2, (64, 96)), (1, (75, 41))])
def test_onnxruntime_matches_torch_at_other_sizes(tiny_model, backend, part, batch, size):
    generator = torch.Generator().manual_seed(1)
    image = torch.randn(batch, 3, *size, generator=generator)
    coord_features = torch.rand(batch, 2, *size, generator=generator)
    with torch.no_grad():
        expected = ExportedPart(tiny_model, part)(image, coord_features)
    expected = expected if isinstance(expected, tuple) else (expected,)
    actual = backend.run(part, image, coord_features)
    assert len(actual) == len(expected)
    for got, want in zip(actual, expected, strict=True):
        assert got.shape == want.shape and got.dtype == torch.float32
        torch.testing.assert_close(got, want, atol=LOGIT_TOLERANCE, rtol=0)


def test_file_records_part_and_weights(tiny_model, exported):
    onnx = pytest.importorskip("onnx")  # part of the extra; only the metadata reader is used here
    meta = {entry.key: entry.value for entry in onnx.load(str(exported["after_aspp"])).metadata_props}
    assert meta["fbrs.part"] == "after_aspp"
    assert fbrs.models.ModelConfig.from_dict(json.loads(meta["fbrs.model_config"])) == tiny_model.config
    dims = onnx.load(str(exported["full"])).graph.input[0].type.tensor_type.shape.dim
    assert [bool(dim.dim_param) for dim in dims] == [True, False, True, True]  # batch, 3, height, width


@pytest.mark.parametrize("mode", ["NoBRS", "f-BRS-A", "f-BRS-B"])
@pytest.mark.parametrize("zoom_in", [False, True])
def test_predictor_onnx_backend_matches_torch(tiny_model, backend, image, mode, zoom_in):
    torch_predictor = fbrs.Predictor(tiny_model, mode=mode, zoom_in=zoom_in)
    onnx_predictor = fbrs.Predictor(tiny_model, mode=mode, zoom_in=zoom_in, backend=backend)
    assert onnx_predictor.backend == "onnx" and torch_predictor.backend == "torch"
    torch_predictor.set_image(image)
    onnx_predictor.set_image(image)
    for y, x, positive in CLICKS:
        expected = torch_predictor.add_click(y, x, positive)
        actual = onnx_predictor.add_click(y, x, positive)
        np.testing.assert_allclose(actual, expected, atol=PROB_TOLERANCE, rtol=0)
        np.testing.assert_array_equal(actual > 0.49, expected > 0.49)
        assert len(onnx_predictor.refiner.last_loss_values) == len(torch_predictor.refiner.last_loss_values)
    # Undo restores the ONNX-computed f-BRS cache exactly, as with torch.
    onnx_predictor.undo()
    np.testing.assert_allclose(onnx_predictor.add_click(*CLICKS[-1]), actual, atol=0, rtol=0)


def test_predictor_copies_and_pickles_share_or_reopen_the_files(tiny_model, backend, image):
    import copy
    import pickle

    predictor = fbrs.Predictor(tiny_model, mode="f-BRS-B", backend=backend)
    predictor.set_image(image)
    expected = predictor.add_click(30, 40, True)
    clone = copy.deepcopy(predictor)
    assert clone._network.backend is backend  # sessions are shared, the model is copied
    assert pickle.loads(pickle.dumps(backend)).parts == backend.parts
    clone.reset()
    np.testing.assert_array_equal(clone.add_click(30, 40, True), expected)


def test_nobrs_with_only_an_insertion_part(tiny_model, exported, image):
    """NoBRS on an after_aspp file: that part in ONNX Runtime, decoder and head in torch."""
    backend = OnnxBackend(tiny_model, exported["after_aspp"], threads=1)
    predictions = []
    for predictor in (fbrs.Predictor(tiny_model, mode="NoBRS"), fbrs.Predictor(tiny_model, "NoBRS", backend=backend)):
        predictor.set_image(image)
        predictions.append(predictor.predict([(30, 40), (5, 5)], [1, 0]))
    np.testing.assert_allclose(predictions[1], predictions[0], atol=PROB_TOLERANCE, rtol=0)


def test_backend_onnx_with_files(tiny_model, exported, image):
    predictions = []
    for predictor in (
        fbrs.Predictor(tiny_model, mode="f-BRS-B"),
        fbrs.Predictor(tiny_model, mode="f-BRS-B", backend="onnx", onnx_files=[exported["after_aspp"]]),
    ):
        predictor.set_image(image)
        predictions.append(predictor.predict([(30, 40), (5, 5)], [1, 0]))
    np.testing.assert_allclose(predictions[1], predictions[0], atol=PROB_TOLERANCE, rtol=0)


def test_clear_errors(tiny_model, exported, tmp_path):
    with pytest.raises(CheckpointError, match="ONNX file not found"):
        OnnxBackend(tiny_model, tmp_path / "missing.onnx")
    (tmp_path / "garbage.onnx").write_bytes(b"not a protobuf")
    with pytest.raises(CheckpointError, match="not a readable ONNX model"):
        OnnxBackend(tiny_model, tmp_path / "garbage.onnx")
    other = fbrs.build_model("tiny_test")  # other random weights: its torch head would not match the file
    with pytest.raises(CheckpointError, match="other weights"):
        OnnxBackend(other, exported["full"])
    with pytest.raises(ConfigError, match="needs the ONNX part 'after_aspp'"):
        fbrs.Predictor(tiny_model, mode="f-BRS-B", backend="onnx", onnx_files=exported["full"])
    with pytest.raises(ConfigError, match="supports NoBRS and f-BRS"):
        fbrs.Predictor(tiny_model, mode="RGB-BRS", backend="onnx", onnx_files=exported["full"])
    with pytest.raises(ConfigError, match="needs onnx_files"):
        fbrs.Predictor(tiny_model, mode="NoBRS", backend="onnx")
    with pytest.raises(ConfigError, match="unknown backend"):
        fbrs.Predictor(tiny_model, mode="NoBRS", backend="tensorrt")
    with pytest.raises(ConfigError, match="is a folder"):
        export_onnx(tiny_model, tmp_path, "full")
    with pytest.raises(ConfigError, match="unknown ONNX part"):
        export_onnx(tiny_model, tmp_path / "x.onnx", "after_head")


def test_missing_dependency_names_the_extra(monkeypatch):
    import importlib.util

    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "onnxruntime" else real_find_spec(name, *a)
    )
    with pytest.raises(MissingDependencyError, match=r"onnxruntime not installed.*fbrs\[onnx\]") as error:
        require_modules("onnxruntime")
    assert isinstance(error.value, FbrsError) and INSTALL_HINT in str(error.value)


def test_output_paths():
    assert output_paths("m.onnx", ["full"]) == {"full": Path("m.onnx")}
    paths = output_paths("out/m.onnx", ["full", "after_aspp"])
    assert [str(path) for path in paths.values()] == ["out/m.full.onnx", "out/m.after_aspp.onnx"]


def test_cli_export_onnx(tiny_model, tmp_path, capsys):
    model_path = fbrs.save_model(tiny_model, tmp_path / "tiny.safetensors")
    output = tmp_path / "out" / "tiny.onnx"
    assert main(["export-onnx", "--model", str(model_path), "-o", str(output), "--part", "after_decoder"]) == 0
    printed = capsys.readouterr().out
    assert f"{output}: tiny_test, part after_decoder" in printed and "max |diff|" in printed
    assert not list(output.parent.glob("*.tmp"))  # written atomically: no temporary left behind
    predictor = fbrs.Predictor(fbrs.load_model(model_path), mode="f-BRS-C", backend="onnx", onnx_files=output)
    assert predictor.backend == "onnx"

    assert main(["export-onnx", "--model", str(tmp_path / "nope.safetensors"), "-o", str(output)]) == 2
    assert "nope.safetensors" in capsys.readouterr().err
    assert main(["export-onnx", "--model", str(model_path), "-o", str(tmp_path)]) == 2
    assert "is a folder" in capsys.readouterr().err
