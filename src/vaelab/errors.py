"""User-facing errors: one line that names the problem and the fix; the CLI exits 2 on them."""


class VaelabError(Exception):
    """A bad input or setting; the message says what is wrong and how to fix it."""
