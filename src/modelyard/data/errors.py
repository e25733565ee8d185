"""Errors about what a user hands a model, shared by the image and text preprocessors."""

from __future__ import annotations


class InvalidInputError(ValueError):
    """The input cannot be classified; `code` is a stable machine-readable reason."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
