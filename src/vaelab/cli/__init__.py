"""The command line: one `add_<command>` beside each `cmd_<command>`; exit codes; the listing without torch."""
