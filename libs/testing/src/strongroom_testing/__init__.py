"""Test support for Strongroom: fixtures that start real servers and contract suites for every port."""
