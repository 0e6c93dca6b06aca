"""Dependencies are honest: PyMaxflow, FastAPI, uvicorn and matplotlib are required (pyproject), so a missing
one is an ImportError naming it where it is used, never a mode list that silently lacks the baselines."""

from __future__ import annotations

import subprocess
import sys

import pytest

BLOCK_MAXFLOW = "import sys; sys.modules['maxflow'] = None  # any import of it now raises ImportError\n"


def _python(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", BLOCK_MAXFLOW + code], capture_output=True, text=True)


@pytest.mark.parametrize(
    "listing",
    [
        "import fbrs; fbrs.available_modes()",
        "from fbrs.evaluation.runner import available_modes; available_modes()",
        "from fbrs.app.engine import _registered_modes; _registered_modes()",
        "import fbrs; fbrs.create_predictor('graphcut')",
    ],
)
def test_missing_pymaxflow_raises_instead_of_hiding_the_baselines(listing):
    result = _python(listing)
    assert result.returncode != 0 and "maxflow" in result.stderr


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
