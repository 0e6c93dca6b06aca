"""Dependencies are honest: PyMaxflow, FastAPI, uvicorn and matplotlib are required (pyproject). A missing
PyMaxflow never makes a mode list silently lack the baselines: its modes are listed as unavailable with the
reason, and building one raises MissingDependencyError naming it."""

from __future__ import annotations

import subprocess
import sys

BLOCK_MAXFLOW = "import sys; sys.modules['maxflow'] = None  # any import of it now raises ImportError\n"


def _python(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", BLOCK_MAXFLOW + code], capture_output=True, text=True)


def test_missing_pymaxflow_lists_its_modes_as_unavailable_everywhere_and_creating_one_says_why():
    # One behaviour for a missing optional dependency: every listing (library, evaluation, app) shows the
    # modes that need it as unavailable with the reason, the others work, and building one raises an FbrsError.
    code = (
        "import numpy as np, fbrs\n"
        "from fbrs.registry import PREDICTORS\n"
        "from fbrs.evaluation.runner import available_modes\n"
        "from fbrs.app.engine import PredictionEngine\n"
        "names = fbrs.available_modes()\n"
        "assert available_modes() == names and 'graphcut' in names, names\n"
        "unavailable = [name for name in names if not PREDICTORS.spec(name).available]\n"
        "assert unavailable == ['graphcut', 'esc', 'gsc'], unavailable\n"
        "assert 'PyMaxflow' in PREDICTORS.spec('graphcut').unavailable_reason\n"
        "entries = {entry['name']: entry for entry in PredictionEngine().modes()}\n"
        "assert not entries['gsc']['available'] and 'PyMaxflow' in entries['gsc']['unavailable_reason']\n"
        "assert entries['growcut']['available']\n"
        "predictor = fbrs.create_predictor('growcut')\n"
        "predictor.set_image(np.zeros((16, 16, 3), np.uint8))\n"
        "predictor.add_click(8, 8, True)\n"
        "try:\n"
        "    fbrs.create_predictor('graphcut')\n"
        "except fbrs.errors.MissingDependencyError as error:\n"
        "    print(error)\n"
    )
    result = _python(code)
    assert result.returncode == 0, result.stderr
    assert "mode graphcut is unavailable" in result.stdout and "pip install PyMaxflow" in result.stdout


def test_learned_modes_do_not_need_pymaxflow():
    code = (
        "import fbrs, numpy as np, torch\n"
        "torch.manual_seed(0)\n"
        "predictor = fbrs.create_predictor('NoBRS', model=fbrs.build_model('tiny_test'))\n"
        "predictor.set_image(np.zeros((32, 32, 3), np.uint8))\n"
        "print(predictor.add_click(10, 10, True).shape)\n"
    )
    result = _python(code)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "(32, 32)"


def test_required_dependencies_are_declared():
    from importlib.metadata import requires

    declared = {
        requirement.split(">")[0].split("=")[0].split(";")[0].strip().lower()
        for requirement in requires("fbrs")
        if "extra ==" not in requirement
    }
    assert {"pymaxflow", "fastapi", "uvicorn", "matplotlib"} <= declared
