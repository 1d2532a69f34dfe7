"""The one exception type for bad user input: commands turn it into one line and exit 2."""


class UserError(ValueError):
    """Input that the user must fix; its message says what is wrong and how to fix it."""
