"""Root pytest configuration: real-server fixtures for every test directory."""

pytest_plugins = ["strongroom_testing.servers_plugin"]
