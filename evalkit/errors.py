"""User-facing errors: one clear sentence, exit code 2, nothing stored touched."""

from __future__ import annotations


class EvalkitError(Exception):
    """Bad input from the user (spec, flag, name, checkpoint). The CLI prints it and exits 2."""

    exit_code = 2


class SpecError(EvalkitError):
    """A YAML spec that does not validate; the message names file, line and field."""


class UnknownNameError(EvalkitError):
    """A task / model / mixer / adapter name that is not registered."""


class CheckpointError(EvalkitError):
    """A checkpoint that is missing, truncated, or does not match its config."""


class ContextLengthError(EvalkitError):
    """A context length a model cannot take."""


class StoreError(EvalkitError):
    """A results store that cannot be opened safely (newer schema, corrupt, locked)."""
