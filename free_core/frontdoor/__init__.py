"""The front door of a run: options and their checks, the one call to samples, the CLI and its demo."""
