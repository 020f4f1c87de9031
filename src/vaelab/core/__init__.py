"""The floor every layer stands on: errors, the registry, atomic writes, the bounded YAML reader, progress,
provenance, statistics, plugins, the "can this path be written?" probes (`paths`). Imports nothing else of vaelab."""
