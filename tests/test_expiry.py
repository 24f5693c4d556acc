"""Expiry alerts of override certificates (issue 14 item 3, RFD 0237 "Expiration alerts").

The levels at set clock values (the RFD's own table), the AUTHSIM_NOW clock, and on a real 3-node cluster:
the alerts in `authsim status`, `authctl status` and `get ca_overrides --format text`, each level recorded
once per certificate as an event by the node holding the key (also across restarts), and a credential
clipped to an override certificate that ends before its TTL.
"""

from __future__ import annotations

import datetime as dt
import json
import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509

from authsim.cluster.api.local_cluster import LocalCluster
from authsim.cluster.cli.authsim import main as authsim_main
from authsim.cluster.cli.demo import EMPTY_OVERRIDE
from authsim.cluster.cli.runner import run_in_process
from authsim.cluster.errors import ValidationError
from authsim.cluster.local.external_ca import init
from authsim.cluster.resources import clock
from authsim.cluster.resources.expiry import ExpiryLevel, alert_threshold, expiry_level, override_alerts
from authsim.cluster.resources.override import CertAuthorityOverride, CertificateOverride
from tests.certs import external_ca, override_cert, rsa_key

DAY = dt.timedelta(days=1)
START = dt.datetime(2030, 1, 1, tzinfo=dt.timezone.utc)
LOW, MEDIUM, HIGH, NONE = ExpiryLevel.LOW, ExpiryLevel.MEDIUM, ExpiryLevel.HIGH, ExpiryLevel.NONE


def level_at(total_days: int, remaining: dt.timedelta) -> ExpiryLevel:
    not_after = START + total_days * DAY
    return expiry_level(START, not_after, not_after - remaining)


@pytest.mark.parametrize(
    ("total_days", "remaining_days", "level"),
    [  # the RFD's table (10y and 1y certificates), then one day earlier than each row
        (3652, 365, LOW),
        (3652, 180, MEDIUM),
        (3652, 90, HIGH),
        (365, 183, LOW),
        (365, 92, MEDIUM),
        (365, 46, HIGH),
        (3652, 366, NONE),
        (3652, 181, LOW),
        (3652, 91, MEDIUM),
        (365, 184, NONE),
        (365, 93, LOW),
        (365, 47, MEDIUM),
    ],
)
def test_levels_of_the_rfd_table(total_days: int, remaining_days: int, level: ExpiryLevel) -> None:
    assert level_at(total_days, remaining_days * DAY) is level


def test_thresholds_take_the_smaller_of_days_and_share_of_life() -> None:
    assert alert_threshold(LOW, 3652 * DAY) == 365 * DAY  # 365 days < half of 10 years
    assert alert_threshold(LOW, 100 * DAY) == 50 * DAY  # half of 100 days < 365 days
    assert alert_threshold(MEDIUM, 100 * DAY) == 25 * DAY
    assert alert_threshold(HIGH, 100 * DAY) == 13 * DAY  # 12.5 days, rounded up to whole days


def test_boundaries_to_the_second_and_expired_is_high() -> None:
    assert level_at(3652, 365 * DAY) is LOW
    assert level_at(3652, 365 * DAY + dt.timedelta(seconds=1)) is NONE
    assert level_at(3652, dt.timedelta(seconds=1)) is HIGH
    assert level_at(3652, -DAY) is HIGH


def test_clock_reads_authsim_now(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(clock.NOW_ENV, "2031-02-03T04:05:06+02:00")
    assert clock.now() == dt.datetime(2031, 2, 3, 2, 5, 6, tzinfo=dt.timezone.utc)
    monkeypatch.setenv(clock.NOW_ENV, "2031-02-03T04:05:06")  # no zone: UTC
    assert clock.now() == dt.datetime(2031, 2, 3, 4, 5, 6, tzinfo=dt.timezone.utc)
    monkeypatch.setenv(clock.NOW_ENV, "next tuesday")
    with pytest.raises(ValidationError, match="AUTHSIM_NOW: 'next tuesday' is not an ISO 8601 time"):
        clock.now()
    monkeypatch.delenv(clock.NOW_ENV)
    assert abs(clock.now() - dt.datetime.now(dt.timezone.utc)) < dt.timedelta(seconds=5)


def test_override_alerts_per_entry_with_certificate() -> None:
    issuer = external_ca()[0]
    soon = override_cert(rsa_key(1), issuer, not_before=START, not_after=START + 365 * DAY)
    later = override_cert(rsa_key(2), issuer, not_before=START, not_after=START + 3652 * DAY)
    resource = CertAuthorityOverride(
        "mycluster",
        "windows",
        (
            CertificateOverride(certificate=soon.pem),
            CertificateOverride(certificate=later.pem, disabled=True),
            CertificateOverride(public_key="ab" * 32, disabled=True),
        ),
    )
    [alert] = override_alerts(resource, START + 300 * DAY)
    assert (alert.public_key_hash, alert.level, alert.disabled) == (soon.key_hash, MEDIUM, False)
    assert alert.describe() == "medium: 65 days left (not after 2031-01-01 00:00 UTC)"
    alerts = override_alerts(resource, START + 3400 * DAY)  # the 10y one is low; the 1y one expired
    assert [(a.public_key_hash, a.level) for a in alerts] == [(soon.key_hash, HIGH), (later.key_hash, LOW)]
    assert alerts[0].describe() == "high: expired 2031-01-01 00:00 UTC"


# ---- on a real cluster ----------------------------------------------------------------------------


def wait_for(check: Callable[[], bool], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.3)
    return check()


def alert_events(cluster: LocalCluster, level: str = "") -> list[dict[str, Any]]:
    return [
        e
        for e in cluster.events()
        if e.get("event") == "cert_authority_override.expiry_alert" and (not level or e["level"] == level)
    ]


def restarted(cluster: LocalCluster, monkeypatch: pytest.MonkeyPatch, now: dt.datetime) -> LocalCluster:
    """Stop every node (by PID), then start the same cluster dir with AUTHSIM_NOW = `now`."""
    cluster.stop()
    monkeypatch.setenv(clock.NOW_ENV, now.isoformat())
    return LocalCluster.start(cluster.directory, nodes=3)


def test_alerts_shown_recorded_once_per_level_and_credentials_clipped(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(clock.NOW_ENV, raising=False)
    cluster = LocalCluster.start(tmp_path / "c", nodes=3)
    try:
        start = dt.datetime.now(dt.timezone.utc)
        certs = cluster.override_certs(init(tmp_path / "extca"), "windows")  # valid 365 days from now
        (tmp_path / "empty.yaml").write_text(EMPTY_OVERRIDE.format(ca_type="windows", cluster="mycluster"))
        assert cluster.authctl("create", str(tmp_path / "empty.yaml")).exit_code == 0
        keys = {}
        for node, pem in certs.items():
            (tmp_path / f"{node}.pem").write_text(pem)
            result = cluster.authctl(
                "auth", "create-override", "--type=windows", f"{tmp_path}/{node}.pem", node=node
            )
            assert result.exit_code == 0, result.stderr
            keys[node] = result.stdout.split()[1]  # "override <hash prefix> added: ..."
        time.sleep(1)
        assert alert_events(cluster) == []  # 365 days left: no level yet
        assert "expiry alert" not in cluster.authctl("status").stdout

        # 200 days later: 165 days left of 365, low (at most 183 days); one event per key, by its node
        cluster = restarted(cluster, monkeypatch, start + 200 * DAY)
        assert wait_for(lambda: len(alert_events(cluster)) >= 3, 30), alert_events(cluster)
        low = alert_events(cluster)
        assert sorted((e["auth_node"], e["public_key_hash"][:16], e["level"]) for e in low) == sorted(
            (node, key, "low") for node, key in keys.items()
        )
        assert {e["code"] for e in low} == {"TCO05W"}
        status = cluster.authctl("status").stdout
        for node, key in keys.items():
            # 164 or 165: whole days of 365 - 200 around the moment of signing
            assert re.search(rf"expiry alert: windows key {key} \({node}\) low: 16[45] days left", status), (
                status
            )
        overview = run_in_process(authsim_main, ["status", "--dir", str(cluster.directory)]).stdout
        assert overview.count("expiry alert: windows key") == 3 and re.search(
            " low: 16[45] days left", overview
        )
        table = cluster.authctl("get", "ca_overrides/windows", "--format", "text").stdout
        assert "EXPIRY ALERT" in table and table.count("│ low ") == 3, table
        yaml_status = json.loads(cluster.authctl("status", "--format", "json").stdout)
        assert {a["level"] for a in yaml_status["expiry_alerts"]} == {"low"}

        # Restarted at the same time: the level is recorded already (a marker in etcd), nothing again
        cluster = restarted(cluster, monkeypatch, start + 200 * DAY)
        time.sleep(3)
        assert len(alert_events(cluster)) == 3

        # 350 days later: 15 days left, high; a 30-day credential ends with its override certificate
        cluster = restarted(cluster, monkeypatch, start + 350 * DAY)
        assert wait_for(lambda: len(alert_events(cluster, "high")) >= 3, 30), alert_events(cluster)
        assert len(alert_events(cluster, "high")) == 3 and len(alert_events(cluster, "low")) == 3
        assert "│ high " in cluster.authctl("get", "ca_overrides/windows", "--format", "text").stdout
        result = cluster.authctl(
            "auth",
            "sign",
            "--type=windows",
            "--user",
            "alice",
            "--ttl",
            str(30 * 24 * 3600),
            "--out",
            f"{tmp_path}/alice",
        )
        assert result.exit_code == 0, result.stderr
        info = json.loads((tmp_path / "alice.json").read_text())
        signer_cert = certs[info["node"]]
        ends = x509.load_pem_x509_certificate(signer_cert.encode()).not_valid_after_utc
        assert info["not_after_clipped"] is True and info["not_after"] == ends.isoformat()
        assert "the credential's not_after is clipped to" in result.stderr
    finally:
        cluster.stop()
