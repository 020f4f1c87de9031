"""Many runs at once: sweeps (local and Ray), `compare`, and `reproduce` (the whole study)."""
