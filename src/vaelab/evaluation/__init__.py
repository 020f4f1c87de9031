"""Numbers about a model and a run: bounds and IW log-likelihoods, exact enumeration, the AE's likelihood,
gradient variance, the sample classifier and sample quality, and the run-level steps that write eval.json."""
