"""atlasreg's version: a leaf module, so what records it (model files, BIDS derivatives) imports
no more than this."""

__version__ = "0.1.0"
