"""STS side: the AssumeRole client and the credential cache (single-flight, refresh-ahead, prefetch)."""
