"""Figures (PNG) and the HTML/Markdown report. Reads a study's results; imports only :mod:`pipeline.core`."""
