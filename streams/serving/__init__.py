"""What serves the tags to people and systems: the Redis store and its sink, the guide API
and page, and the WeCom sync. Never imports streams.worker."""
