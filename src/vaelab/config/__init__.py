"""The run specification: the config dataclasses and presets (`schema`) and their checks against every
registry (`checks`), before anything is built or written."""
