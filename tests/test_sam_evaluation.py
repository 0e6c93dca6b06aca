"""`fbrs evaluate --modes SAM` end to end with the bundled SAM-family model on a one-image dataset."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image

from fbrs.cli import main


def test_fbrs_evaluate_runs_the_sam_family(tmp_path: Path):
    rows, cols = np.mgrid[0:80, 0:112]
    mask = ((rows - 40) / 22.0) ** 2 + ((cols - 50) / 30.0) ** 2 < 1
    rng = np.random.default_rng(0)
    image = rng.integers(0, 60, (80, 112, 3), dtype=np.uint8)
    image[mask] = (220, 40, 40)
    (tmp_path / "data" / "images").mkdir(parents=True)
    (tmp_path / "data" / "masks").mkdir()
    Image.fromarray(image).save(tmp_path / "data" / "images" / "ellipse.png")
    Image.fromarray(mask.astype(np.uint8) * 255).save(tmp_path / "data" / "masks" / "ellipse.png")
    run = tmp_path / "run"
    arguments = ["evaluate", "--datasets", str(tmp_path / "data"), "--modes", "SAM,SAM-f-BRS-upscaled",
                 "--out", str(run), "--max-clicks", "3", "--gallery", "0", "--no-progress"]
    assert main(arguments) == 0
    summary = json.loads((run / "summary.json").read_text())
    assert {entry["mode"] for entry in summary["results"]} == {"SAM", "SAM-f-BRS-upscaled"}
    for mode in ("SAM", "SAM-f-BRS-upscaled"):
        (record,) = [json.loads(line) for line in (run / "results" / "data" / f"{mode}.jsonl").read_text().splitlines()]
        assert record["ious"][0] > 0.8  # a red ellipse on dark noise: one click finds it
