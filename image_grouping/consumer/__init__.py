"""The RabbitMQ entry point: topology, consumer loop, retries, dead letters, liveness, SIGTERM drain."""
