"""The agent version window N-1..N (ADR 0045)."""

from __future__ import annotations

import pytest
from strongroom_gateway.agent_versions import accepted, check_agent_version, gateway_release, release
from strongroom_gateway.errors import FailedPrecondition


def test_release_of_versions() -> None:
    assert release("0.1.0") == (0, 1)
    assert release("1.4.2-1") == (1, 4)
    assert release("2.10") == (2, 10)
    for bad in ("", "1", "one.two", "1.2 3", "v1.2.0"):
        assert release(bad) is None, bad


def test_n_is_the_gateway_distribution_version() -> None:
    assert gateway_release() == (0, 1)  # strongroom-gateway 0.1.0


@pytest.mark.parametrize("version", ["1.3.0", "1.3.7", "1.4.0", "1.4.2-1"])
def test_n_minus_one_to_n_are_served(version: str) -> None:
    check_agent_version(version, (1, 4))


@pytest.mark.parametrize(
    ("version", "says"),
    [
        ("1.2.9", "agent 1.2.9 is too old: this gateway serves agents 1.3 to 1.4; upgrade it on the host"),
        ("0.9.0", "too old"),
        ("1.5.0", "newer than this gateway (1.4): upgrade the platform before its agents"),
        ("2.0.0", "newer than this gateway"),
        ("", "the agent reports no usable version"),
        ("test", "the agent reports no usable version"),
    ],
)
def test_others_are_refused_saying_what_to_do(version: str, says: str) -> None:
    with pytest.raises(FailedPrecondition) as refused:
        check_agent_version(version, (1, 4))
    assert says in str(refused.value)


def test_the_first_minor_of_a_major_serves_itself_only() -> None:
    assert accepted((2, 0)) == ((2, 0), (2, 0))
    with pytest.raises(FailedPrecondition):
        check_agent_version("1.9.0", (2, 0))
