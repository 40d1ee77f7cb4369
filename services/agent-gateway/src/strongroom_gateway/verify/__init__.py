"""Repository verification (ADR 0033): re-read stored packs, decrypt them, hash every chunk, map damage to files.

- ``checks``: pure CPU (one pack's bytes against its chunk rows; a manifest's files against damaged chunks);
- ``engine``: one verification, bounded in memory and concurrency, rate limited;
- ``worker``: the gateway's background task that runs queued verifications and the daily sample;
- ``service`` / ``grpc_api``: the operators' VerifyService;
- ``ports`` / ``repository`` / ``testing``: persistence.
"""
