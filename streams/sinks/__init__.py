"""Where tag state leaves the stream: the Redis serving store (and, beside it, WeCom)."""
