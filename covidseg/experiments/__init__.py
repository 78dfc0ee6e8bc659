"""Experiment drivers that reproduce the paper's analyses (the Table 1 grid of sources x regularization)."""
