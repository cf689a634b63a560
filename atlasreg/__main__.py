"""``python -m atlasreg`` runs the CLI."""

from .cli import main

main()
