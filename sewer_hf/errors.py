"""Errors caused by user input. The CLI prints these as one clear message, without a traceback."""


class SewerHFError(Exception):
    """Base class: bad input, missing files, wrong configuration."""


class DataError(SewerHFError, ValueError):
    """An annotation file, image or dataset does not have the expected content."""


class ConfigError(SewerHFError, ValueError):
    """A configuration key or value is unknown or out of range."""
