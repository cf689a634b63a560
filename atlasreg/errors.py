"""The one exception type users see: anything they can cause raises AtlasregError."""


class AtlasregError(ValueError):
    """Bad input or a request atlasreg cannot carry out (message is one line, for humans)."""
