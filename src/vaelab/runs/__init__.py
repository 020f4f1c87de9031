"""A run directory: `RunDir` (`run_dir`) answers what it holds, holds its lock and decides train, resume or skip;
the data on the device (`device_data`), provenance records and checks (`provenance`), checkpoints (`checkpoint`),
a trained run rebuilt from its directory (`loaded_run`), stop signals (`lifecycle`), the training state's validation
(`train_state`), metrics.jsonl and TensorBoard (`metrics_log`), the best checkpoint (`best`) and a run as one file
(`bundle`)."""
