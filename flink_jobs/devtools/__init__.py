"""Local servers and demos for development and the tests.

A Kafka broker, PostgreSQL, a Flink cluster, a Kafka Connect worker, and the demos that run the
job between them.

Never shipped to the workers (see ``flink_jobs.cli.submit.pack_project``); the job never imports it.
"""
