-- The MLflow tracking server keeps its runs in a second database of the same PostgreSQL.
CREATE DATABASE mlflow OWNER autoprune;
