"""Named encoder presets (``*.yaml``), installed as the package data ``models.presets``."""
