"""Optuna: the sweep's config, storage and locks, the fenced fast path into Optuna's storage
(`optuna_fast.py`), the trial objective, the worker loop and pool, and the study's summary."""
