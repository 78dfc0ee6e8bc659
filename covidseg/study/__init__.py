"""Cross-validated comparison of fine-tuning schemes on one dataset (the real-data study of RESULTS.md).

:mod:`covidseg.study.spec` reads a preset (``configs/study/*.yaml``), :mod:`covidseg.study.runner` trains every
scheme on every fold and the final model, :mod:`covidseg.study.report` writes the tables and paired tests.
The driver is ``pipelines/real_data_study.py``.
"""
