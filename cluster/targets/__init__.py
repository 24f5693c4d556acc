"""Downstream target servers that verify the credentials the cluster issues (SPEC §8, seed steps 3 and 5).

A desktop target stands in for a Windows domain (an NTAuth store plus trusted roots, `desktop`) and a
database target for a TLS server that requires client certificates (a CA bundle, `database`). Each runs
as its own process (`python -m authsim.cluster.targets`); their trust lives in PEM files under
`<cluster dir>/targets/` (`trust`) and is re-read on every connection. The launcher starts them
(`authsim.cluster.local.target_process`); nodes open sessions on them with
`authsim.auth_node.target_sessions`.
"""
