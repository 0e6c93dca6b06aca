"""Evaluation of interactive segmentation: datasets, the click robot, NoC metrics, the `fbrs evaluate`
runner, reports, plots and the speed benchmark.

Importing this package is cheap (numpy + PIL): the training code imports the dataset loaders from here.
Everything that needs torch or matplotlib is imported inside the functions that use it.
"""

from fbrs.evaluation.datasets import Dataset, Sample, load_dataset

__all__ = ["Dataset", "Sample", "load_dataset"]
