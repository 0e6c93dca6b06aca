"""Drive a running Label Studio with label-studio-sdk, as a user and its frontend would. Runs in the Label Studio
venv (see label_studio_env.py), never in the project's: it imports label_studio_sdk, not fbrs.

stdin: JSON {"url", "token", "label_config", "local_files_root", "task_data", "backend_url", "contexts": [[region,
...], ...], "out_dir"}. It creates a project with the labelling config, a local-files storage (Label Studio
serves /data/local-files/ only under one), imports the task, connects the ML backend with interactive
pre-annotations on, then for each context sends `POST /api/ml/{id}/interactive-annotating` with
{"task", "context": {"result": regions}}, exactly the frontend's request, and decodes the brush RLE of each
answer with Label Studio's own decoder (label_studio_sdk.converter.brush) into out_dir/mask_K.npy.
stdout (last line): JSON {"project", "task", "ml_backend", "responses": [...]}.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np
from label_studio_sdk import LabelStudio
from label_studio_sdk.converter.brush import decode_rle


def main() -> None:
    spec = json.loads(sys.stdin.read())
    client = LabelStudio(base_url=spec["url"], api_key=spec["token"], timeout=120)
    project = client.projects.create(title=spec.get("title", "fbrs interactive"), label_config=spec["label_config"])
    client.import_storage.local.create(project=project.id, path=spec["local_files_root"], title="fbrs samples",
                                      use_blob_urls=True)
    imported = client.projects.import_tasks(project.id, request=[{"data": spec["task_data"]}], return_task_ids=True)
    task_ids = list(imported.task_ids or [])
    if not task_ids:
        task_ids = [task.id for task in client.tasks.list(project=project.id)]
    task_id = task_ids[0]
    # Label Studio checks /health and calls /setup (with its URL and the user's token) here.
    backend = client.ml.create(url=spec["backend_url"], project=project.id, is_interactive=True, title="fbrs",
                               timeout=120)
    backend = client.ml.get(backend.id)
    responses = []
    out_dir = Path(spec["out_dir"])
    for index, regions in enumerate(spec["contexts"]):
        started = time.monotonic()
        raw = client.ml.with_raw_response.predict_interactive(backend.id, task=task_id, context={"result": regions})
        seconds = time.monotonic() - started
        body = raw.response.json()
        entry = {"status": raw.status_code, "seconds": round(seconds, 3), "errors": body.get("errors")}
        data = body.get("data")
        if isinstance(data, dict):
            results = data.get("result") or []
            entry["data"] = {**data, "result": [{**r, "value": {**r["value"], "rle": len(r["value"]["rle"])}}
                                                for r in results]}
            if results:
                first = results[0]
                pixels = decode_rle(first["value"]["rle"])
                mask = pixels.reshape(first["original_height"], first["original_width"], 4)[:, :, 3] > 0
                entry["mask_file"] = str(out_dir / f"mask_{index}.npy")
                np.save(entry["mask_file"], mask)
        responses.append(entry)
    print(json.dumps({
        "project": project.id,
        "task": task_id,
        "ml_backend": {"id": backend.id, "state": str(backend.state), "is_interactive": backend.is_interactive,
                       "model_version": getattr(backend, "model_version", None)},
        "responses": responses,
    }))


if __name__ == "__main__":
    main()
