"""Every registered predictor mode, parametrised over the registry (fbrs.registry.PREDICTORS): the predictor
API, exact undo, bad input, and the facts its ModeSpec claims. A mode registered later gets these tests
without a line here. Tiny models (tiny_test, the tiny random SAM) and small images: the file runs in seconds
apart from the ONNX exports (one per f-BRS insertion point, only where onnx is installed)."""

from __future__ import annotations

import inspect

import numpy as np
import pytest
import torch

import fbrs
from fbrs.errors import ConfigError, FbrsError, InvalidClickError, InvalidImageError, MissingDependencyError
from fbrs.registry import PREDICTORS, ModeSpec

SPECS = PREDICTORS.specs()
NAMES = [spec.name for spec in SPECS]
HEIGHT, WIDTH = 40, 52
CLICKS = [(20, 26, True), (3, 4, False), (25, 34, True)]
EXTRA = (14, 45, False)
# Options every family takes: keep the learned modes' crops and L-BFGS short.
FAST = {"deeplab": {"zoom_in_target_size": 48, "lbfgs_max_evaluations": 4}, "sam": {"lbfgs_max_evaluations": 4}}


@pytest.fixture(scope="module")
def image():
    rng = np.random.default_rng(0)
    picture = rng.integers(0, 60, size=(HEIGHT, WIDTH, 3), dtype=np.uint8)
    picture[10:30, 15:40] = rng.integers(180, 255, size=(20, 25, 3), dtype=np.uint8)
    return picture


@pytest.fixture
def models(tiny_model, tiny_sam):
    return {"deeplab": tiny_model, "sam": tiny_sam}


def build(spec: ModeSpec, models: dict, **options):
    """The mode's predictor on a tiny model: the CLIs' DeepLab model where it takes one, the tiny SAM for the
    SAM family, none otherwise (a family of its own brings its default)."""
    model = models["deeplab"] if spec.needs_model else models.get(spec.family)
    if not spec.available:
        pytest.skip(f"{spec.name} is unavailable here: {spec.unavailable_reason}")
    return fbrs.create_predictor(spec.name, model=model, **{**FAST.get(spec.family, {}), **options})


@pytest.mark.parametrize("name", NAMES)
def test_clicks_undo_and_state_are_exact(name, models, image):
    predictor = build(PREDICTORS.spec(name), models)
    predictor.set_image(image)
    maps = []
    for y, x, positive in CLICKS:
        probabilities = predictor.add_click(y, x, positive)
        assert probabilities.shape == (HEIGHT, WIDTH) and probabilities.dtype == np.float32
        assert np.isfinite(probabilities).all() and 0.0 <= probabilities.min() and probabilities.max() <= 1.0
        maps.append(probabilities.copy())
    assert [(c.y, c.x, c.is_positive) for c in predictor.clicks] == [(float(y), float(x), p) for y, x, p in CLICKS]
    # Undo gives back the previous map exactly, and the click after it is computed as the first time.
    assert np.array_equal(predictor.undo(), maps[1])
    assert len(predictor.clicks) == 2
    assert np.array_equal(predictor.add_click(*CLICKS[2]), maps[2])
    # set_state returns to a saved point after other clicks: the next click is computed from it exactly.
    state = predictor.get_state()
    predictor.undo()
    predictor.undo()
    predictor.set_state(state)
    assert len(predictor.clicks) == 3
    fourth = predictor.add_click(*EXTRA)
    assert np.array_equal(predictor.undo(), maps[2])
    assert np.array_equal(predictor.add_click(*EXTRA), fourth)
    predictor.reset()
    assert predictor.clicks == []
    assert np.array_equal(predictor.add_click(*CLICKS[0]), maps[0])


@pytest.mark.parametrize("name", NAMES)
def test_predict_is_the_incremental_result(name, models, image):
    predictor = build(PREDICTORS.spec(name), models)
    predictor.set_image(image)
    incremental = [predictor.add_click(y, x, p) for y, x, p in CLICKS][-1]
    clicks_before = predictor.clicks
    points, labels = [(y, x) for y, x, _ in CLICKS], [int(p) for _, _, p in CLICKS]
    assert np.array_equal(predictor.predict(points, labels), incremental)
    assert predictor.clicks == clicks_before  # predict leaves the interactive state alone


@pytest.mark.parametrize("name", NAMES)
def test_bad_input_raises_the_library_errors(name, models, image):
    predictor = build(PREDICTORS.spec(name), models)
    with pytest.raises(InvalidImageError):
        predictor.add_click(5, 5, True)  # no image yet
    for bad_image in (
        np.zeros((HEIGHT, WIDTH, 2), np.uint8),  # two channels
        np.zeros((2, HEIGHT, WIDTH, 3), np.uint8),  # a batch
        np.zeros((HEIGHT, WIDTH, 3), np.complex64),  # no image dtype
        np.full((HEIGHT, WIDTH, 3), 2.0, np.float32),  # float outside [0, 1]
    ):
        with pytest.raises(InvalidImageError):
            predictor.set_image(bad_image)
    predictor.set_image(image)
    for y, x in ((HEIGHT, 5), (5, WIDTH), (-1, 5), (5, -0.5), (float("nan"), 5), (5, float("inf")), ("a", 5)):
        with pytest.raises(InvalidClickError):
            predictor.add_click(y, x, True)
    assert predictor.clicks == []  # a refused click changes nothing
    predictor.add_click(*CLICKS[0])
    assert len(predictor.clicks) == 1


@pytest.mark.parametrize("name", NAMES)
def test_spec_options_are_the_predictors_and_a_typo_is_named(name, models):
    spec = PREDICTORS.spec(name)
    predictor = build(spec, models)
    parameters = inspect.signature(type(predictor)).parameters
    assert set(spec.options) <= set(parameters), "a declared option the predictor does not take"
    with pytest.raises(ConfigError, match="zoom_inn"):
        build(spec, models, zoom_inn=True)


@pytest.mark.parametrize("name", NAMES)
def test_spec_facts_gradients_and_oracle(name, models, image):
    from fbrs.inference.brs.refiners import NoRefinement

    spec = PREDICTORS.spec(name)
    predictor = build(spec, models)
    refiner = getattr(predictor, "refiner", None)
    assert spec.gradients == (refiner is not None and not isinstance(refiner, NoRefinement))
    assert (getattr(predictor, "model", None) is models["deeplab"]) == spec.needs_model
    predictor.set_image(image)
    predictor.add_click(*CLICKS[0])
    mask = np.zeros((HEIGHT, WIDTH), bool)
    mask[10:30, 15:40] = True
    if spec.oracle:
        refined = predictor.oracle_refine(mask)
        assert refined.shape == (HEIGHT, WIDTH) and refined.dtype == np.float32
    elif hasattr(predictor, "oracle_refine"):
        with pytest.raises(ValueError, match="not f-BRS"):
            predictor.oracle_refine(mask)


_EXPORTS: dict[str, object] = {}


def _insertion_file(model, part: str, folder) -> object:
    """One exported insertion-point part per module (tracing takes seconds): the ONNX claims of all modes
    share them. Only the part before the insertion point: the local part after it is optional (torch)."""
    from fbrs.onnx import export_onnx

    if part not in _EXPORTS:
        _EXPORTS[part] = export_onnx(model, folder / f"{part}.onnx", part)
    return _EXPORTS[part]


@pytest.mark.parametrize("name", NAMES)
def test_spec_onnx_claim_holds(name, models, image, tmp_path_factory):
    from fbrs.onnx import policy

    spec = PREDICTORS.spec(name)
    assert policy.supports_onnx(name) == spec.onnx
    if not spec.onnx:
        assert policy.backend_for_mode("onnx", name) == "torch"  # the CLIs run it in torch
        if spec.family == "deeplab":
            with pytest.raises(ConfigError, match="supports NoBRS and f-BRS"):
                build(spec, models, backend="onnx")  # refused before anything is exported
        return
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    insertion = spec.config.insertion or "after_aspp"  # NoBRS runs on any insertion part
    path = _insertion_file(models["deeplab"], insertion, tmp_path_factory.mktemp("onnx", numbered=True))
    torch_predictor = build(spec, models)
    onnx_predictor = build(spec, models, backend="onnx", onnx_files=[path])
    assert onnx_predictor.backend == "onnx" and torch_predictor.backend == "torch"
    for predictor in (torch_predictor, onnx_predictor):
        predictor.set_image(image)
    for click in CLICKS[:2]:
        np.testing.assert_allclose(onnx_predictor.add_click(*click), torch_predictor.add_click(*click), atol=1e-4)


def test_an_unavailable_mode_is_listed_with_its_reason_and_refused_with_it():
    spec = ModeSpec(
        name="test-needs-a-missing-module", factory=lambda model=None, **options: None, family="test",
        needs_model=False, requires=(("fbrs_no_such_module", "fbrs-no-such-package"),),
    )
    PREDICTORS.add(spec)
    try:
        assert spec.name in fbrs.available_modes() and not PREDICTORS.spec(spec.name).available
        assert "fbrs-no-such-package" in PREDICTORS.meta(spec.name)["unavailable_reason"]
        with pytest.raises(MissingDependencyError, match="fbrs-no-such-package") as error:
            fbrs.create_predictor(spec.name)
        assert isinstance(error.value, FbrsError)
        with pytest.raises(KeyError, match="already registered"):
            PREDICTORS.add(spec)
    finally:
        PREDICTORS.remove(spec.name)
    assert spec.name not in fbrs.available_modes()


def test_the_registry_is_the_one_list_of_modes():
    from fbrs.app.engine import PredictionEngine
    from fbrs.evaluation.runner import available_modes
    from fbrs.inference.modes import MODES
    from fbrs.inference.sam_modes import SAM_MODES

    assert fbrs.available_modes() == available_modes() == NAMES
    assert {entry["name"] for entry in PredictionEngine(torch.nn.Identity()).modes()} == set(NAMES)
    assert PREDICTORS.names(family="deeplab") == list(MODES) and PREDICTORS.names(family="sam") == list(SAM_MODES)
    assert len(PREDICTORS.names(family="baseline")) == 6
    with pytest.raises(KeyError, match="unknown predictor mode 'f-BRS-Z'"):
        fbrs.create_predictor("f-BRS-Z")
