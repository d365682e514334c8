"""`python -m streams.tools.kafka_server fetch`: copy the pinned Kafka broker's jars into the
cache."""

import sys

from streams.tools.kafka_server import main

sys.exit(main(sys.argv[1:]))
