"""Behavioural contract suites for the platform's ports.

Each suite is an abstract pytest class: subclass it in a test module (name the
subclass ``Test...``) and provide its fixtures. The in-memory fakes and the
real adapters all run the same suite, so a fake can only pass where the real
server behaves the same way.
"""

from strongroom_testing.contracts.eventbus import BusHarness, EventBusContract
from strongroom_testing.contracts.objectstore import Attacker, InMemoryAttacker, ObjectStoreContract, S3Attacker

__all__ = [
    "Attacker",
    "BusHarness",
    "EventBusContract",
    "InMemoryAttacker",
    "ObjectStoreContract",
    "S3Attacker",
]
