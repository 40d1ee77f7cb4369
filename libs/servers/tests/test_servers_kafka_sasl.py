"""KafkaSaslSsl: what the SASL_SSL listener option of LocalKafka accepts (the broker itself is
exercised in libs/platform/tests/test_platform_kafka_sasl.py, with the platform's clients)."""

from __future__ import annotations

from pathlib import Path

import pytest
from strongroom_servers import KafkaSaslSsl

PEM = Path("unused.pem")


def test_scram_users_and_mechanism_are_checked_before_they_reach_the_broker() -> None:
    listener = KafkaSaslSsl(PEM, PEM, PEM, users={"svc": "s3cret-Pass.word"})
    assert listener.mechanism == "SCRAM-SHA-512"
    assert KafkaSaslSsl(PEM, PEM, PEM, mechanism="SCRAM-SHA-256").mechanism == "SCRAM-SHA-256"
    with pytest.raises(ValueError, match="mechanism must be one of SCRAM-SHA-512, SCRAM-SHA-256, got 'PLAIN'"):
        KafkaSaslSsl(PEM, PEM, PEM, mechanism="PLAIN")
    # "," and "]" would end StorageTool's [name=...,password=...]; '"' would end the JAAS string.
    for name, password in [("svc", "a,b"), ("svc", "a]b"), ("svc", 'a"b'), ("a b", "pw"), ("svc", "")]:
        with pytest.raises(ValueError, match="names and passwords must match"):
            KafkaSaslSsl(PEM, PEM, PEM, users={name: password})
    with pytest.raises(ValueError, match="the broker's own user"):
        KafkaSaslSsl(PEM, PEM, PEM, users={"strongroom-broker": "pw"})
