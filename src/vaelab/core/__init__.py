"""The floor every layer stands on: errors, the registry, atomic writes, the bounded YAML reader, progress,
provenance, statistics, plugins. Imports nothing else of vaelab."""
