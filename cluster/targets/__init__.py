"""Downstream targets that verify the credentials the cluster issues (SPEC §8, seed steps 3 and 5).

A desktop target stands in for a Windows domain (an NTAuth store plus trusted roots) and a database
target for a TLS server that requires client certificates (a CA bundle). Each runs as its own process
(`python -m cluster.targets`, started with `start_target`); their trust lives in PEM files under
`<cluster dir>/targets/` (`add_trust`, `authsim trust`) and is re-read on every connection. Nodes use
`open_desktop_session` / `open_db_session` to exercise them.
"""

from cluster.targets.client import SessionResult, open_db_session, open_desktop_session
from cluster.targets.database import DATABASE_NAME
from cluster.targets.desktop import DESKTOP_NAME, verify_desktop_credential
from cluster.targets.process import start_target, target_marker, wait_listening
from cluster.targets.trust import Trust, add_trust, read_trust, set_default_trust, trust_file

__all__ = [
    "DATABASE_NAME",
    "DESKTOP_NAME",
    "SessionResult",
    "Trust",
    "add_trust",
    "open_db_session",
    "open_desktop_session",
    "read_trust",
    "set_default_trust",
    "start_target",
    "target_marker",
    "trust_file",
    "verify_desktop_credential",
    "wait_listening",
]
