"""Evaluation: scores of label maps against references, paired statistics between runs, the paper's figures.

* :mod:`covidseg.evaluate.labels`: what stored label values mean (binary / multi-class references);
* :mod:`covidseg.evaluate.scores`: per-case 3-D Dice, sensitivity, precision, volumes; summaries;
* :mod:`covidseg.evaluate.files`: ``covidseg evaluate PRED REF`` on label-map files;
* :mod:`covidseg.evaluate.checkpoint_eval`: a checkpoint run on a dataset split and evaluated;
* :mod:`covidseg.evaluate.stats`: paired Wilcoxon test and bootstrap interval (``covidseg compare``);
* :mod:`covidseg.evaluate.drift_figure` and :mod:`covidseg.evaluate.overlays`: Figures 1 and 2.
"""
