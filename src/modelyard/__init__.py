"""modelyard: the machine-learning logic of the pipeline, importable without any server."""

__version__ = "0.1.0"
