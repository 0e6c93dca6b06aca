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
from fbrs.onnx import (
    INSTALL_HINT,
    OnnxBackend,
    cached_onnx_files,
    default_cache_dir,
    export_onnx,
    output_paths,
    policy,
    require_modules,
)
from fbrs.onnx.export import ExportedPart, example_inputs

# Exported once per module (tracing takes seconds); after_backbone covers the two-output part, decoder_head
# the local part that f-BRS-A/B re-run at every L-BFGS evaluation.
PARTS = ("full", "after_backbone", "after_aspp", "decoder_head")
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
    inputs = example_inputs(tiny_model, part, size, batch, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = ExportedPart(tiny_model, part)(*inputs)
    expected = expected if isinstance(expected, tuple) else (expected,)
    actual = backend.run(part, *inputs)
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
        # The first L-BFGS evaluation is at the same point; later ones may take another path on a flat loss,
        # since ONNX Runtime's whole-map pass differs from torch's in the last float bits.
        onnx_losses, torch_losses = onnx_predictor.refiner.last_loss_values, torch_predictor.refiner.last_loss_values
        assert len(onnx_losses) == len(torch_losses) == 0 or abs(onnx_losses[0] - torch_losses[0]) < 1e-5
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
    with pytest.raises(ConfigError, match="takes 1 inputs"):
        OnnxBackend(tiny_model, exported["decoder_head"]).run("decoder_head", torch.zeros(1, 3, 8, 8), torch.zeros(1))
    with pytest.raises(ConfigError, match="needs the ONNX part 'full' or an insertion point"):
        fbrs.Predictor(tiny_model, mode="NoBRS", backend="onnx", onnx_files=exported["decoder_head"])
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


def test_fbrs_runs_the_whole_map_pass_of_every_evaluation_in_onnxruntime(tiny_model, backend, image, monkeypatch):
    """With the local part loaded, the no-grad whole-map pass of each L-BFGS evaluation runs in ONNX Runtime;
    the windowed gradient (requires_grad input) stays in torch."""
    calls = []
    run = OnnxBackend.run
    monkeypatch.setattr(OnnxBackend, "run", lambda self, part, *inputs: calls.append(part) or run(self, part, *inputs))
    # The whole-map pass runs apart from the gradient only with the windowed gradient (the app's setting).
    predictor = fbrs.Predictor(tiny_model, mode="f-BRS-B", backend=backend, windowed_gradient=True)
    predictor.set_image(image)
    for y, x, positive in CLICKS[:3]:
        predictor.add_click(y, x, positive)
    evaluations = len(predictor.refiner.last_loss_values)
    assert evaluations > 0 and calls.count("decoder_head") >= evaluations
    with torch.enable_grad():
        features = torch.randn(1, tiny_model.insertion_channels("after_aspp"), 6, 7, requires_grad=True)
        logits = predictor._network.local_logits("after_aspp", features)
    assert logits.requires_grad  # torch ran it: the gradient can flow back to the f-BRS variables


def test_backend_onnx_without_files_exports_once_into_the_cache(tiny_model, image, tmp_path, monkeypatch):
    monkeypatch.setenv("FBRS_CACHE_DIR", str(tmp_path / "cache"))
    assert default_cache_dir() == tmp_path / "cache"
    predictions = []
    for backend in ("torch", "onnx"):
        predictor = fbrs.Predictor(tiny_model, mode="f-BRS-C", backend=backend)
        predictor.set_image(image)
        predictions.append(predictor.predict([(30, 40), (5, 5), (40, 70)], [1, 0, 1]))
    np.testing.assert_allclose(predictions[1], predictions[0], atol=PROB_TOLERANCE, rtol=0)
    (folder,) = (tmp_path / "cache" / "onnx").iterdir()
    assert folder.name.startswith("tiny_test-")
    assert sorted(path.name for path in folder.iterdir()) == ["after_decoder.onnx", "head.onnx"]

    # The second time nothing is exported: the cached files are used.
    def no_export(*args, **kwargs):
        raise AssertionError("exported again")

    monkeypatch.setattr("fbrs.onnx.export.export_onnx", no_export)
    assert fbrs.Predictor(tiny_model, "f-BRS-C", backend="onnx").backend == "onnx"
    # Other weights, other folder: never the files of another model.
    other = fbrs.build_model("tiny_test")
    with pytest.raises(AssertionError, match="exported again"):
        cached_onnx_files(other, ["head"])


def test_backend_choice_per_mode(monkeypatch):
    assert policy.backend_for_mode("onnx", "f-BRS-B") == "onnx"
    assert policy.backend_for_mode("onnx", "RGB-BRS") == "torch"  # differentiates through the whole network
    assert policy.backend_for_mode("onnx", "graphcut") == "torch"  # no network at all
    assert policy.backend_for_mode("torch", "NoBRS") == "torch"
    assert policy.backend_for_mode("auto", "NoBRS") == "onnx"  # make test installs the extra
    monkeypatch.setattr(policy, "onnx_available", lambda: False)
    assert policy.backend_for_mode("auto", "NoBRS") == "torch"
    assert policy.backend_for_mode("onnx", "NoBRS") == "onnx"  # asked for explicitly: the error will say why
    with pytest.raises(ConfigError, match="unknown backend"):
        policy.backend_for_mode("tensorrt", "NoBRS")
    assert policy.backend_for_mode("auto", "NoBRS", device="cuda") == "torch"  # ONNX Runtime runs on the CPU
    with pytest.raises(ConfigError, match="runs on the CPU"):
        policy.check_backend_choice("onnx", "cuda")


def test_cli_predict_with_the_onnx_backend(tiny_model, image, tmp_path, capsys):
    from fbrs.io_utils import save_png_atomic

    model_path = fbrs.save_model(tiny_model, tmp_path / "tiny.safetensors")
    save_png_atomic(tmp_path / "image.png", image)
    for backend in ("torch", "onnx"):
        output = tmp_path / f"mask_{backend}.png"
        arguments = ["predict", str(tmp_path / "image.png"), "--model", str(model_path), "--mode", "f-BRS-B"]
        arguments += ["--click", "30,40,+", "--click", "5,5,-", "--backend", backend, "-o", str(output)]
        assert main(arguments) == 0
    captured = capsys.readouterr()
    assert "exporting tiny_test part after_aspp to ONNX" in captured.err  # said once, before the wait
    assert (tmp_path / "mask_onnx.png").read_bytes() == (tmp_path / "mask_torch.png").read_bytes()
    arguments = ["predict", str(tmp_path / "image.png"), "--model", str(model_path), "--mode", "RGB-BRS"]
    assert main([*arguments, "--click", "30,40,+", "--backend", "onnx", "-o", str(tmp_path / "x.png")]) == 2
    assert "supports NoBRS and f-BRS" in capsys.readouterr().err


def test_a_damaged_cache_file_is_exported_again(tiny_model, image, tmp_path, monkeypatch):
    monkeypatch.setenv("FBRS_CACHE_DIR", str(tmp_path))
    (full,) = cached_onnx_files(tiny_model, ["full"])
    full.write_bytes(b"truncated by a full disk")
    predictor = fbrs.Predictor(tiny_model, mode="NoBRS", backend="onnx")
    predictor.set_image(image)
    expected = fbrs.Predictor(tiny_model, mode="NoBRS")
    expected.set_image(image)
    np.testing.assert_allclose(predictor.add_click(30, 40, True), expected.add_click(30, 40, True), atol=PROB_TOLERANCE)
    assert full.stat().st_size > 1000


def test_weights_fingerprint_is_computed_once_per_model_and_follows_in_place_changes(monkeypatch):
    import copy
    import hashlib

    from fbrs.onnx import parts, weights_fingerprint

    hashed, sha256 = [], hashlib.sha256
    monkeypatch.setattr(parts.hashlib, "sha256", lambda: hashed.append(1) or sha256())
    model = fbrs.build_model("tiny_test")
    first = weights_fingerprint(model)
    assert weights_fingerprint(model) == first and len(hashed) == 1  # the second time from the cache
    assert weights_fingerprint(copy.deepcopy(model)) == first and len(hashed) == 2  # another object: hashed
    with torch.no_grad():
        next(model.parameters()).add_(1.0)  # an in-place change of the weights (an optimizer step, a calibration)
    changed = weights_fingerprint(model)
    assert changed != first and len(hashed) == 3
    model.load_state_dict(copy.deepcopy(model).state_dict())  # copy_ in place: same values, hashed again
    assert weights_fingerprint(model) == changed and len(hashed) == 4


def test_the_shared_sessions_are_bounded_and_clearable(tiny_model, monkeypatch, tmp_path):
    from fbrs.onnx import cache

    class Opened:
        def __init__(self, model, paths):
            self.paths = paths

    monkeypatch.setattr(cache, "OnnxBackend", Opened)
    monkeypatch.setattr(cache, "_SHARED_BACKENDS", type(cache._SHARED_BACKENDS)())
    first = cache.shared_backend(tiny_model, tmp_path / "0.onnx")
    assert cache.shared_backend(tiny_model, tmp_path / "0.onnx") is first  # opened once, then shared
    for index in range(1, 12):
        cache.shared_backend(tiny_model, tmp_path / f"{index}.onnx")
    assert len(cache._SHARED_BACKENDS) == cache._SHARED_BACKENDS_SIZE  # the least recently used went
    assert cache.shared_backend(tiny_model, tmp_path / "0.onnx") is not first
    cache.clear_shared_backends()
    assert not cache._SHARED_BACKENDS
