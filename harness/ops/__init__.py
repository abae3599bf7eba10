"""Services a study may need: PostgreSQL and an MLflow server, and the MLflow UI."""
