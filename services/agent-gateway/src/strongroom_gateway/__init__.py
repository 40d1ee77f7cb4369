"""The agent gateway: agent enrollment and sessions, chunk ingest into packs in S3, point commits."""
