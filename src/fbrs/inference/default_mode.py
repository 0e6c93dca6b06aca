"""The mode a command runs when the user names none, and the fall-back when it cannot run here.

The app (`fbrs.app.engine.DEFAULT_MODE`) and `fbrs predict` (`fbrs.inference.cli.DEFAULT_PREDICT_MODE`) each
keep their own constant (today both "SAM-f-BRS-tokens-guarded-zoom", chosen on GrabCut and Berkeley NoC@90
and #>=20 at an accepted latency, see README); this module decides, in one place, whether that mode can run
on this install. The SAM family needs its two model files (bundled package data, or $FBRS_SAM_DECODER /
$FBRS_SAM_ENCODER) and ONNX Runtime for the encoder; without them the commands fall back to the bundled
DeepLab's f-BRS-B-guarded and say why.
"""

from __future__ import annotations

import importlib.util

#: What a command runs when its preferred default cannot run here, and on a DeepLab `--model FILE`: the
#: paper's recommended f-BRS-B with the guard (`fbrs.inference.brs.guard`), which beat plain f-BRS-B on
#: GrabCut and Berkeley: NoC@90 5.46 / 9.65 against 5.76 / 9.66, the same unsolved counts (3 / 17), and 2 / 13
#: instances losing > 0.3 IoU at a click against 6 / 34 (README, "SAM family"). f-BRS-B itself stays as the
#: paper has it (its goldens).
FALLBACK_MODE = "f-BRS-B-guarded"


def unavailable_reason(mode: str) -> str | None:
    """Why `mode` cannot run on this install (a sentence), or None when it can as far as files and
    packages go: the registry's reason (a missing optional dependency), and for the SAM family its model
    files and ONNX Runtime; DeepLab modes load their model later and explain a missing one there."""
    from fbrs.registry import PREDICTORS

    if mode not in PREDICTORS:
        return f"mode {mode!r} is not registered"
    spec = PREDICTORS.spec(mode)
    if spec.unavailable_reason is not None:
        return spec.unavailable_reason
    if spec.family != "sam":
        return None
    from fbrs.models.sam.model import missing_sam_files

    missing = missing_sam_files()
    if missing:
        return f"the SAM model files are missing ({', '.join(str(path) for path in missing)})"
    if importlib.util.find_spec("onnxruntime") is None:
        return "the SAM image encoder needs ONNX Runtime (pip install 'fbrs[onnx]')"
    return None


def runnable_default(preferred: str, fallback: str = FALLBACK_MODE) -> tuple[str, str | None]:
    """(mode, note): `preferred` when it can run here (note None), else `fallback` and a line for the user
    saying why, e.g. "default mode SAM unavailable: the SAM model files are missing (...); using f-BRS-B-guarded"."""
    reason = unavailable_reason(preferred)
    if reason is None:
        return preferred, None
    return fallback, f"default mode {preferred} unavailable: {reason}; using {fallback}"
