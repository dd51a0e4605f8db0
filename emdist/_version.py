"""The version of emdist (one place; stored in what emdist writes)."""

__version__ = "0.1.0"
