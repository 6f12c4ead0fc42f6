"""The one exception type for user mistakes: the CLIs print its message on one line, exit 2."""


class UserError(Exception):
    """A mistake in the user's input (config, paths, data); the message names the fix."""
