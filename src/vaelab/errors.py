"""User-facing errors: one line that names the problem and the fix; the CLI exits 2 on them."""


class VaelabError(Exception):
    """A bad input or setting; the message says what is wrong and how to fix it."""


class Stopped(Exception):
    """Training stopped on a signal after writing a checkpoint; the CLI prints the message and exits 128 + signum."""

    def __init__(self, message: str, signum: int) -> None:
        super().__init__(message)
        self.signum = signum
