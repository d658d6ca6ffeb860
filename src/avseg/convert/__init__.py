"""Converters from the authors' released checkpoints to avseg checkpoints (``avseg convert <method> IN OUT``).

Each converter is a pure key map (upstream name → avseg name) plus the command that applies it, loads nothing
through unrestricted pickle, and reports every unmapped key.
"""
