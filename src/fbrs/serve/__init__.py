"""fbrs inside the annotation tools teams already use (`fbrs serve label-studio`, `fbrs serve cvat`).

    segmenter.py     one model, a predictor kept warm per image (LRU): the k-th click costs one click
    label_studio.py  the Label Studio ML backend protocol (/health, /setup, /predict) as a FastAPI app
    task_images.py   fetching a Label Studio task's image (local files, uploads, http(s) URLs)
    brush_rle.py     Label Studio's own brush RLE encoder/decoder (label-studio-sdk or -converter)
    cvat.py          CVAT's interactor contract (version 2): the nuclio handler and a FastAPI route
    cli.py           `fbrs serve ...`

Clicks are (y, x) inside fbrs; each platform's (x, y) (percent in Label Studio, pixels in CVAT) is
converted once, where its request is parsed.
"""
