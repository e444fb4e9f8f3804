"""One module per benchmark section; each exposes ``run(context) -> dict``."""
