"""The errors a user can fix (bad config, bad data, unusable files): the command prints their
one-line message and exits 2, without a traceback unless ``--debug`` or ``DESMPI_DEBUG=1``.
Anything else is a bug or a crash and keeps its traceback."""


class UserError(Exception):
    """Base of the errors whose message is the whole story (it names the key, file or line)."""


class DataError(UserError, ValueError):
    """Input data that cannot be used; the message names file and line."""


EXIT_USER_ERROR = 2
