"""The guide HTTP API (`tagstream api`): profiles, audiences and live feeds, and the guide page."""
