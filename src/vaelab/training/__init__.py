"""The trainer: one loop that applies an estimator's loss (`trainer`), its CUDA-graph wrapper, and the
stacked-seeds model that feeds its step to the same loop."""
