"""Errors a run stops on, shown to the user as one line."""


class TrainError(RuntimeError):
    """A run that cannot go on; the message is shown to the user as one line."""
