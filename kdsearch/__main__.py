"""``python -m kdsearch`` (also what ``torchrun -m kdsearch`` runs)."""
from kdsearch.cli import entry

entry()
