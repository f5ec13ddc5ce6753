"""Imagery: scenes and their catalogue, multi-scale tiling into the chip store, and batched encoding of
chips (the compiled area-resampling kernel beside them). Imports :mod:`pipeline.core` and :mod:`models`."""
