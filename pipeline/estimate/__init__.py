"""Estimation: Multi-scale Concatenation, the cross-fitted CATE estimator, RATE and inference. Imports only
:mod:`pipeline.core`; never torch (the statistics run where no GPU stack is installed)."""
