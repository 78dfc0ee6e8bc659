"""Training: loss, metrics, checkpoints, the training loop, distributed data parallel.

Public entry point: :func:`covidseg.train.trainer.train` (``covidseg train`` on the command line). Import the
submodules directly (``from covidseg.train.trainer import train``); this package imports nothing heavy itself.
"""
