"""The one exception type a user can cause.

Every layer raises :class:`GuardError` for mistakes the user can fix (a missing file, a corrupt
image, an unknown label, a bad step count). The CLI prints its message and exits 2; the service
turns it into a 4xx. Anything else is a bug and keeps its traceback.
"""


class GuardError(Exception):
    """A user-fixable error; the message says what to do."""
