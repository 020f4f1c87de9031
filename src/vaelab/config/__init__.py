"""The run specification: the config dataclasses and presets (`schema`), their checks (`checks`) and the static
tables of the names a config may use (`names`), all before anything is built or written and without torch."""
