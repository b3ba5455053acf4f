"""Dev tooling: a local S3 server, PostgreSQL and Airflow home for tests and the demo, and
generated stream logs. Never imported by production code."""
