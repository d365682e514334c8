"""Development and measurement tools: the local stack and its Kafka jars, the bench, the
history generator and the demo."""
