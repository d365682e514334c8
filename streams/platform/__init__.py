"""What every tagstream process stands on: settings, Kafka and Redis security, redaction,
metrics, the topic names and their creation, and the partition rule. No Faust here."""
