"""The run specification: the config dataclasses and presets (`schema`), their checks (`checks`), the static
tables of the names a config may use (`names`) and the seed and count limits the command line shares (`limits`),
all before anything is built or written and without torch."""
