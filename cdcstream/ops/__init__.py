"""The control plane: Kafka Connect client, Debezium configs, source databases, lifecycle,
credential rotation, verify, backfill estimates and the demo. Never imports faust."""
