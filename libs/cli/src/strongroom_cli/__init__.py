"""The strongroom command: operator CLI and the all-in-one standalone runner."""
