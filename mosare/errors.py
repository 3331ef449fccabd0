"""User-facing errors: a one-line message naming the problem, shown without a traceback."""


class MosareError(Exception):
    """An input or usage problem the user can fix; the CLI prints ``str(err)`` and exits with code 2."""


class InputError(MosareError):
    """An unreadable or malformed input file or table."""


class CheckpointError(MosareError):
    """A checkpoint that is missing, not safetensors + JSON, or for another architecture."""
