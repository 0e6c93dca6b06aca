"""The paper's experiments (`fbrs study NAME`). A layer above evaluation and training: a study runs
evaluations and, for the loss ablation, trains models, so it lives in neither of them (no import cycle)."""
