"""MLflow: the tracker and run logger, the writer process, the fenced fast paths into MLflow's
SQL store (`mlflow_fast.py`), the tracking server client and the store checks."""
