"""A run directory: `RunDir` (`run_dir`) answers what it holds, holds its lock and decides train, resume or skip;
checkpoints and the model they rebuild (`run_files`), stop signals (`lifecycle`), the training state's validation
(`train_state`), metrics.jsonl and TensorBoard (`metrics_log`), the best checkpoint (`best`) and a run as one file
(`bundle`)."""
