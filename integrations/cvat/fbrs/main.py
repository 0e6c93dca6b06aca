"""nuclio entry point of the fbrs CVAT interactor (function.yaml: `handler: main:handler`).

The contract lives in fbrs.serve.cvat, shared with `fbrs serve cvat`: init_context loads the model once per
worker (FBRS_MODE, FBRS_MODEL, FBRS_CACHE_SIZE), handler answers
{"image", "pos_points", "neg_points", "obj_bbox", "threshold"} with {"mask", "points"}, or a 4xx saying
what is wrong with the request.
"""

from fbrs.serve.cvat import handler, init_context

__all__ = ["handler", "init_context"]
