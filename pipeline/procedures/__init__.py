"""File-in/file-out procedures: one function per stage, composed from the floors below.

Each ``run`` function reads a study's validated :class:`~pipeline.core.config.Config` and its output folder
(paths from :mod:`pipeline.core.layout`), does the stage's work with the library, and writes the stage's
artifacts atomically. The DVC stages, :class:`pipeline.api.Study` and the CLI all call these functions.
"""
