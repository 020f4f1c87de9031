"""Where the arithmetic runs: device resolution, chunk budgets, autocast, compile (`hardware`), and DDP
and sharding (`distributed`; with one process it changes nothing)."""
