"""The exceptions commands turn into one line: ``UserError`` (bad input, exit 2) and
``RunFailed`` (the input was fine but the run could not finish, exit 1)."""


class UserError(ValueError):
    """Input that the user must fix; its message says what is wrong and how to fix it."""


class RunFailed(RuntimeError):
    """A run that failed through no fault of its input (a worker process was killed); its
    message says what happened. Exit status 1, as for the executor's failed runs, so that
    scripts can tell it from bad input (2) and may retry it."""
