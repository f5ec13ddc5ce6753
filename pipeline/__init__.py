"""Multi-scale Earth-observation CATE pipeline: tiling, embedding, Multi-scale Concatenation, cross-fitted
causal forests and RATE."""

__version__ = "0.1.0"
