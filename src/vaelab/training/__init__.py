"""The trainer: one optimisation step (`step`), one epoch loop that runs it (`epoch`), the epochs around it with
validation, checkpoints and signals (`trainer`), its CUDA-graph wrapper (`cudagraph`), and the stacked-seeds model
(`stacked`) that feeds its own step to the same epoch loop."""
