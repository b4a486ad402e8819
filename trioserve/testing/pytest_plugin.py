"""trioserve's pytest plugin (being built)."""
