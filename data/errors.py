"""The error type for user mistakes that the CLI and app show as one readable line."""


class UserError(Exception):
    """A problem the user can fix (bad path, nothing to train on, ...); no traceback shown."""
