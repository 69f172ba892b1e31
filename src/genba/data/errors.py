"""The data layer's error type, in a module of its own so every data module can raise it without import cycles."""


class DatasetError(ValueError):
    """A dataset (or writer input) that is incomplete, inconsistent or malformed."""
