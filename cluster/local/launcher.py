"""The local cluster launcher behind `authsim up`, `status` and `down` (SPEC §4, §9)."""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path

from authsim.auth_node.config import NodeConfig, ensure_host_id
from authsim.cluster.errors import ClusterError, PortInUseError
from authsim.cluster.layout import ClusterLayout, NodeLayout
from authsim.cluster.local import downstream, hsm_process, hsm_users, identity, interrupts, processes
from authsim.cluster.local.etcd_server import EtcdServer
from authsim.cluster.local.node_client import NodeClient
from authsim.cluster.local.ports import PORT_ATTEMPTS, free_port, port_is_free
from authsim.cluster.local.state import (
    ClusterState,
    EtcdEntry,
    NodeEntry,
    ServerEntry,
    TargetEntry,
    admin_address,
)
from authsim.cluster.local.target_process import start_target, target_marker, wait_listening
from authsim.cluster.mtls import (
    ADMIN_CN,
    TLSIdentity,
    ensure_admin_identity,
    ensure_etcd_client_identity,
    ensure_etcd_member_identity,
    ensure_node_identity,
)
from authsim.cluster.resources.ca_types import CA_TYPES
from authsim.cluster.store import EtcdStore, EtcdTLS
from authsim.cluster.store.addresses import register_targets
from authsim.cluster.store.keys import checked_cluster_name, cluster_prefix
from authsim.cluster.store.probe import check_etcd
from authsim.cluster.store.rbac import grant_cluster_access
from authsim.cluster.targets.trust import set_default_trust
from authsim.hsm import provision_token
from authsim.hsm.provision import HSM_MODES, HSM_PROCESS

NODE_MARKER = "authsim.auth_node"
START_TIMEOUT = 60.0  # seconds for every node to report SERVING
DEFAULT_HSM = HSM_PROCESS  # a new cluster's `--hsm`

Progress = Callable[[str, int, int], None]  # (message, nodes ready, nodes in all)


def admin_identity(directory: Path) -> TLSIdentity:
    admin = ClusterLayout(directory).admin
    return TLSIdentity(admin.cert, admin.key, admin.server_ca)


@dataclass(frozen=True)
class UpOptions:
    nodes: int | None = None
    cluster_name: str | None = None
    etcd_endpoints: list[str] | None = None
    base_port: int | None = None
    etcd_tls: EtcdTLS | None = None  # client TLS to the `etcd_endpoints` (the embedded etcd has its own)
    event_retention: int | None = None  # events the cluster keeps (default: as before, else 10,000)
    join: bool = False  # a dir without a cluster id takes the id of the cluster already on the etcd
    hsm: str | None = None  # `process` or `inprocess` (default: as before, else DEFAULT_HSM)
    hsm_timeout: float | None = None  # seconds a token call may take (default: as before, else 3)


def _checked(options: UpOptions) -> UpOptions:
    """The options with absolute TLS paths; ClusterError for TLS without endpoints or a missing file,
    ValidationError for a cluster name that breaks the rule."""
    if options.cluster_name is not None:
        checked_cluster_name(options.cluster_name)
    if options.etcd_tls is None:
        return options
    if not options.etcd_endpoints:
        raise ClusterError(
            "etcd TLS (--etcd-cacert/--etcd-cert/--etcd-key) needs the endpoints of an existing etcd "
            "(--etcd host:port,...): the embedded etcd uses certificates from the cluster's own etcd CA"
        )
    return replace(options, etcd_tls=options.etcd_tls.checked())


def up(directory: Path, options: UpOptions, progress: Progress = lambda *_: None) -> ClusterState:
    """Start (or restart) the cluster in `directory`, reusing its tokens, keys and etcd data.

    Parts still running (a node, etcd, a target) are left as they are: `up` after a crash starts only
    what is missing. When everything already runs, that is an error.
    """
    options = _checked(options)
    existing = _load_existing(directory)
    running = _running(directory, existing)
    if (
        existing is not None
        and _parts(existing) <= running
        and (not options.nodes or options.nodes <= len(existing.nodes))
    ):
        raise ClusterError(
            f"the cluster in {directory} is already running: `authsim down --dir {directory}` first"
        )
    state = _plan(directory, existing, options, running)
    owner = True  # whether this dir made the cluster (a joined dir starts no targets)
    with interrupts.deferred_interrupt():  # a cluster id claimed on etcd is one saved in the dir
        if not state.etcd.embedded:  # before anything is written: a refused dir stays as it was
            check_etcd(state.etcd.endpoints, state.etcd.tls, cluster_prefix(state.cluster_name))
            owner = identity.made_here(
                directory, identity.claim(directory, state, options.join, existing is None)
            )
        _make_cluster_dir(directory)
        if state.etcd.embedded:
            admin_dir = ClusterLayout(directory).admin.directory
            state.etcd.tls = ensure_etcd_client_identity(directory, state.cluster_name, admin_dir, ADMIN_CN)
        state.save(directory)
    try:
        if state.etcd.embedded:
            if "etcd" not in running:
                progress("starting etcd", 0, len(state.nodes))
                with interrupts.deferred_interrupt():  # a process started is a process recorded
                    _start_etcd(directory, state)
                    state.save(directory)
            log = ClusterLayout(directory).etcd.log
            check_etcd(state.etcd.endpoints, state.etcd.tls, cluster_prefix(state.cluster_name), log)
            _grant_etcd_access(state)
            with interrupts.deferred_interrupt():  # a cluster id claimed on etcd is one saved in the dir
                identity.claim(directory, state, options.join, existing is None)
                state.save(directory)
        ensure_admin_identity(directory, state.cluster_name)
        started: dict[str, subprocess.Popen[bytes]] = {}
        for entry in state.nodes:
            if entry.name not in running:
                started[entry.name] = _launch_node(directory, state, entry)
        with ThreadPoolExecutor(max_workers=2, thread_name_prefix="server") as pool:
            servers = _set_up_servers(pool, directory, state, running) if owner else {}
            try:
                wait_serving(directory, state, started, progress)
            finally:
                with interrupts.deferred_interrupt():  # every server started is recorded, to be stopped
                    ready = _servers_set_up(directory, state, servers)
        if owner:
            progress("starting the downstream targets", len(state.nodes), len(state.nodes))
            _start_targets(directory, state, running, ready)
    except BaseException:
        with interrupts.no_interrupt():  # a second Ctrl-C must not cut the clean-up short
            state.save(directory)  # every PID this `up` holds in memory, so `down` finds them all
            down(directory, only=_parts(state) - running)
        raise
    return state


def down(directory: Path, purge: bool = False, only: set[str] | None = None) -> list[str]:
    """Stop the cluster's processes by PID (`only` those parts, when given); with `purge`, delete the
    directory, only when `authsim up` made it (its marker). Returns what stopped."""
    if purge:
        _check_purgeable(directory)
    stopped: list[str] = []
    existing = _load_existing(directory)
    if existing is not None:
        for entry in existing.nodes:
            if only is not None and entry.name not in only:
                continue
            if processes.stop(entry.pid, node_marker(directory, entry.name)):
                stopped.append(entry.name)
            entry.pid = None
            if hsm_process.stop(directory, entry):
                stopped.append(f"{entry.name} HSM")
        for kind, target in existing.targets.items():
            if only is not None and kind not in only:
                continue
            if processes.stop(target.pid, target_marker(directory, kind)):
                stopped.append(f"{kind} target")
            target.pid = None
        for name, server in existing.servers.items():
            if only is not None and name not in only:
                continue
            if downstream.stop_server(directory, name, server):
                stopped.append(downstream.LABELS[name])
            server.pid = None
        stop_etcd = existing.etcd.embedded and (only is None or "etcd" in only)
        if stop_etcd:
            if processes.stop(existing.etcd.pid, etcd_marker(directory)):
                stopped.append("etcd")
            existing.etcd.pid = None
        existing.save(directory)
    if purge and directory.exists():
        shutil.rmtree(directory)
    return stopped


@dataclass(frozen=True)
class Purged:
    """What `purge` did: the processes stopped, the keys deleted from an external etcd (None: none
    deleted, they stay), and the state of the cluster whose keys stay on an external etcd."""

    stopped: list[str]
    etcd_keys_deleted: int | None
    kept_in_etcd: ClusterState | None


def purge(directory: Path, purge_etcd: bool = False) -> Purged:
    """`down --purge`: stop the cluster and delete its dir; with `purge_etcd`, also its keys on an
    external etcd (the embedded one goes with the dir), only while that etcd holds this dir's cluster
    id: checked before anything stops, so a refusal changes nothing."""
    _check_purgeable(directory)
    state = _load_existing(directory)
    external = state if state is not None and not state.etcd.embedded else None
    seen = identity.purgeable(directory, external) if external is not None and purge_etcd else None
    stopped = down(directory)
    deleted = None
    if external is not None and seen is not None:
        deleted = identity.forget(external.etcd, external.cluster_name, seen)
    down(directory, purge=True)
    return Purged(stopped, deleted, external if not purge_etcd else None)


def _make_cluster_dir(directory: Path) -> None:
    """Create `directory` and mark it as authsim's: when it is new or empty, or already a cluster's
    (made before markers existed). A folder holding anything else is used but never marked."""
    layout = ClusterLayout(directory)
    new = not directory.exists() or not any(directory.iterdir())
    directory.mkdir(parents=True, exist_ok=True)
    if (new or layout.state_file.exists()) and not layout.marker.exists():
        layout.marker.write_text("made by `authsim up`; `authsim down --purge` deletes this directory\n")


def _check_purgeable(directory: Path) -> None:
    if not directory.exists():
        raise ClusterError(f"{directory} does not exist: nothing to purge")
    marker = ClusterLayout(directory).marker
    if not directory.is_dir() or marker.is_symlink() or not marker.is_file():
        raise ClusterError(
            f"{directory} was not made by `authsim up` (no {marker.name} in it): not deleting it"
        )


def _parts(state: ClusterState) -> set[str]:
    """Names of every process the cluster has: nodes, `etcd` when embedded, the target kinds, the
    servers behind the targets."""
    embedded = {"etcd"} if state.etcd.embedded else set()
    return {n.name for n in state.nodes} | embedded | set(state.targets) | set(state.servers)


def _running(directory: Path, state: ClusterState | None) -> set[str]:
    """Names of the parts of `state` whose processes still run: node names, `etcd`, target kinds."""
    if state is None:
        return set()
    names = {n.name for n in state.nodes if _node_running(directory, n)}
    if state.etcd.embedded and processes.is_running(state.etcd.pid, etcd_marker(directory)):
        names.add("etcd")
    names |= {k for k, t in state.targets.items() if processes.is_running(t.pid, target_marker(directory, k))}
    names |= {n for n, e in state.servers.items() if downstream.server_running(directory, n, e)}
    return names


def _load_existing(directory: Path) -> ClusterState | None:
    return ClusterState.load(directory) if ClusterState.path(directory).exists() else None


def node_marker(directory: Path, name: str) -> str:
    """A string only this node's command line contains (its config file)."""
    return str(ClusterLayout(directory).node(name).config)


def etcd_marker(directory: Path) -> str:
    """A string only the embedded etcd's command line contains (its dir, in --data-dir)."""
    return str(ClusterLayout(directory).etcd.directory)


def _node_running(directory: Path, entry: NodeEntry) -> bool:
    return processes.is_running(entry.pid, node_marker(directory, entry.name))


def _base_port(base_port: int, index: int) -> int:
    """`--base-port` + `index`, the port of the new node number `index` + 1; ClusterError naming it when
    it is taken (a port asked for is never silently replaced)."""
    port = base_port + index
    if not port_is_free(port):
        raise ClusterError(
            f"--base-port {base_port}: port {port} (for node{index + 1}) is in use: stop what listens "
            "there, or choose another --base-port (or none: free ports are picked)"
        )
    return port


def _pick_port(preferred: int | None) -> int:
    return preferred if preferred and port_is_free(preferred) else free_port()


def _plan(
    directory: Path, existing: ClusterState | None, options: UpOptions, running: set[str]
) -> ClusterState:
    if existing is not None:
        checked_cluster_name(existing.cluster_name)  # a dir made before names had a rule
        if options.cluster_name and options.cluster_name != existing.cluster_name:
            raise ClusterError(
                f"{directory} holds cluster {existing.cluster_name!r}, not {options.cluster_name!r}: "
                "use another --dir or `authsim down --purge`"
            )
        state = existing
        if options.etcd_endpoints:
            state.etcd = EtcdEntry(endpoints=options.etcd_endpoints, embedded=False, tls=options.etcd_tls)
        elif state.etcd.tls is not None:
            state.etcd.tls.checked()  # restarting with the recorded TLS files: still there?
    else:
        name = options.cluster_name or "mycluster"
        etcd = EtcdEntry(
            endpoints=options.etcd_endpoints or [], embedded=not options.etcd_endpoints, tls=options.etcd_tls
        )
        state = ClusterState(cluster_name=name, etcd=etcd, hsm=DEFAULT_HSM)
    if options.join and state.etcd.embedded:
        raise ClusterError("--join joins a cluster on an existing etcd: give its endpoints with --etcd")
    if options.event_retention is not None:
        if options.event_retention < 1:
            raise ClusterError(f"event retention must be >= 1, not {options.event_retention}")
        state.event_retention = options.event_retention
    if options.hsm is not None:
        if options.hsm not in HSM_MODES:
            raise ClusterError(f"--hsm must be one of {', '.join(HSM_MODES)}, not {options.hsm!r}")
        state.hsm = options.hsm
    if options.hsm_timeout is not None:
        if options.hsm_timeout <= 0:
            raise ClusterError(f"--hsm-timeout must be > 0 seconds, not {options.hsm_timeout:g}")
        state.hsm_timeout = options.hsm_timeout
    wanted = options.nodes or len(state.nodes) or 3
    if wanted < len(state.nodes):
        raise ClusterError(
            f"{directory} already has {len(state.nodes)} nodes; nodes are never removed by `up`"
        )
    for i in range(len(state.nodes), wanted):
        port = _base_port(options.base_port, i) if options.base_port else free_port()
        state.nodes.append(NodeEntry(name=f"node{i + 1}", address=f"127.0.0.1:{port}"))
    for entry in state.nodes:
        if entry.name in running:
            continue
        host, preferred = entry.address.rsplit(":", 1)
        entry.address = f"{host}:{_pick_port(int(preferred))}"
    return state


def _start_etcd(directory: Path, state: ClusterState) -> None:
    """The embedded etcd: TLS only, clients and peers need a certificate from the cluster's etcd CA."""
    etcd = EtcdServer.start(
        ClusterLayout(directory).etcd.data,
        client_port=_recorded_port(state.etcd.client_port),
        peer_port=_recorded_port(state.etcd.peer_port),
        detach=True,
        tls=ensure_etcd_member_identity(directory, state.cluster_name),
    )
    state.etcd.client_port, state.etcd.peer_port = etcd.client_port, etcd.peer_port
    state.etcd.endpoints = [etcd.endpoint]
    state.etcd.pid = etcd.process.pid if etcd.process else None


def _recorded_port(port: int | None) -> int | None:
    """`port` when it is free now, else None: etcd picks a free one (and picks again if it is taken)."""
    return port if port and port_is_free(port) else None


def _grant_etcd_access(state: ClusterState) -> None:
    """etcd RBAC on the embedded etcd: the admin is root, each node may use only this cluster's keys."""

    async def grant() -> None:
        async with EtcdStore(state.etcd.endpoints, tls=state.etcd.tls) as store:
            await grant_cluster_access(store, state.cluster_name, ADMIN_CN, [n.name for n in state.nodes])

    interrupts.run(grant())


def _prepare_node(directory: Path, state: ClusterState, entry: NodeEntry) -> NodeConfig:
    node_dir = ClusterLayout(directory).node(entry.name).directory
    node_dir.mkdir(parents=True, exist_ok=True)
    token = provision_token(node_dir, f"authsim-{entry.name}")
    ensure_node_identity(directory, state.cluster_name, node_dir, entry.name)
    etcd_tls = state.etcd.tls  # an external etcd: the client identity given to `up`
    if state.etcd.embedded:  # the node's own identity, its CN the node's etcd user
        etcd_tls = ensure_etcd_client_identity(directory, state.cluster_name, node_dir, entry.name)
    config = NodeConfig(
        name=entry.name,
        cluster_name=state.cluster_name,
        host_id=ensure_host_id(node_dir),
        listen=entry.address,
        etcd_endpoints=tuple(state.etcd.endpoints),
        node_dir=node_dir,
        pkcs11_module=token.module_path,
        token_label=token.label,
        etcd_tls=etcd_tls,
        event_retention=state.event_retention,
        crl_dir=str(ClusterLayout(directory).crl_dir.resolve()),
        hsm=state.hsm,
        hsm_timeout=state.hsm_timeout,
    )
    config.save()
    return config


def _start_node(config: NodeConfig, user: str | None) -> subprocess.Popen[bytes]:
    """Start the node process, as `user` when it has one (hsm_users)."""
    env = config.token().process_env()
    env["PYTHONUNBUFFERED"] = "1"
    argv = [
        sys.executable,
        "-m",
        NODE_MARKER,
        "--config",
        str(config.layout.config),
        "--log",
        str(config.log_file),
    ]
    isolation = hsm_users.recorded(user)
    return processes.spawn(isolation.node_argv(argv) if isolation else argv, config.log_file, env)


def _restart_node_elsewhere(
    directory: Path, state: ClusterState, entry: NodeEntry
) -> subprocess.Popen[bytes]:
    """Start `entry`'s node again on a newly picked free port, its address and PID recorded at once."""
    host = entry.address.rsplit(":", 1)[0]
    entry.address = f"{host}:{free_port(host)}"
    return _launch_node(directory, state, entry)


def _launch_node(directory: Path, state: ClusterState, entry: NodeEntry) -> subprocess.Popen[bytes]:
    """Start `entry`'s node (after its HSM process, with `hsm: process`), its PID recorded at once:
    `down` stops it whatever happens next. With `hsm: process` and a root launcher, the node runs as
    its own user and cannot read its token (hsm_users), when those users can reach the cluster dir."""
    config = _prepare_node(directory, state, entry)
    entry.user, entry.not_isolated = None, None
    if hsm_users.wanted(state.hsm):
        _isolate(directory, entry, config.layout)
    if state.hsm == HSM_PROCESS:
        with interrupts.deferred_interrupt():  # a process started is a process recorded
            hsm_process.launch(directory, state, entry, config.token())
    with interrupts.deferred_interrupt():  # a process started is a process recorded
        process = _start_node(config, entry.user)
        entry.pid = process.pid
        state.save(directory)
    return process


def _isolate(directory: Path, entry: NodeEntry, node: NodeLayout) -> None:
    """Make `entry` run as its own user, its dir handed over (hsm_users), when the node users can reach
    the cluster dir; else record why not, and leave every file and mode as they are."""
    entry.not_isolated = hsm_users.unreachable(directory)
    if entry.not_isolated is None:
        isolation = hsm_users.ensure(entry.name)
        hsm_users.prepare_cluster_dir(directory)
        hsm_users.secure_node_dir(node, isolation)
        entry.user = isolation.node.name


def write_default_trust(directory: Path, state: ClusterState, targets_dir: Path | None = None) -> list[Path]:
    """The targets' trust files under `targets_dir` (default `directory`) that do not exist yet, trusting
    the cluster's self-signed CAs as its first node reports them (with `directory`'s admin identity)."""
    entry = state.nodes[0]
    with NodeClient(admin_address(directory, entry), admin_identity(directory), entry.name) as client:
        cas = {ca_type: client.get_cert_authority(ca_type) for ca_type in CA_TYPES}
    ca_pems = {
        t: [pair.cert for pair in (*ca.active_keys, *ca.additional_trusted_keys)] for t, ca in cas.items()
    }
    return set_default_trust(targets_dir or directory, ca_pems["windows"], ca_pems["db_client"])


def _set_up_servers(
    pool: ThreadPoolExecutor, directory: Path, state: ClusterState, running: set[str]
) -> dict[str, Future[downstream.Server]]:
    """The servers behind the targets that do not run, set up (and started when their trust is known)
    in `pool`, beside the nodes starting."""
    names = [n for n in downstream.SERVERS.values() if n not in running]
    return {name: pool.submit(downstream.setup_server, directory, state, name) for name in names}


def _servers_set_up(
    directory: Path, state: ClusterState, servers: dict[str, Future[downstream.Server]]
) -> dict[str, downstream.Server]:
    """Wait for `servers`, record the PID of each that started (so `down` finds it), then raise the
    first failure."""
    ready, failure = {}, None
    for name, future in servers.items():
        try:
            ready[name] = future.result()
        except BaseException as e:
            failure = failure or e
            continue
        if ready[name].process is not None:
            state.servers[name] = ServerEntry(f"127.0.0.1:{ready[name].port}", ready[name].pid)
    state.save(directory)
    if failure is not None:
        raise failure
    return ready


def _start_targets(
    directory: Path, state: ClusterState, running: set[str], servers: dict[str, downstream.Server]
) -> None:
    """The desktop and database targets, trusting the cluster's self-signed CAs unless told otherwise,
    each in front of its real server (started here when it waited for that trust)."""
    write_default_trust(directory, state)
    for name, server in servers.items():
        with interrupts.deferred_interrupt():  # a server started is a server recorded
            state.servers[name] = downstream.finish_server(directory, server)
            state.save(directory)
    started = {}
    for kind in dict.fromkeys(t.target for t in CA_TYPES.values()):
        if kind in running:
            continue
        previous = state.targets.get(kind)
        port = _pick_port(int(previous.address.rsplit(":", 1)[1]) if previous else None)
        started[kind] = _start_target(directory, state, kind, port)
    for kind, process in started.items():
        _wait_target(directory, state, kind, process)
    register_target_addresses(state)


def _start_target(directory: Path, state: ClusterState, kind: str, port: int) -> subprocess.Popen[bytes]:
    """Start the `kind` target on `port` in front of its server, its address and PID recorded at once
    (for `down`)."""
    behind = state.servers[downstream.SERVERS[kind]].address
    with interrupts.deferred_interrupt():  # a process started is a process recorded
        process = start_target(directory, kind, port, state.cluster_name, behind)
        state.targets[kind] = TargetEntry(f"127.0.0.1:{port}", process.pid)
        state.save(directory)
    return process


def _wait_target(directory: Path, state: ClusterState, kind: str, process: subprocess.Popen[bytes]) -> None:
    """Wait until the `kind` target listens; when another process took its port first, start it again
    on a free port (PORT_ATTEMPTS starts in all)."""
    log = ClusterLayout(directory).target(kind).log
    for _ in range(PORT_ATTEMPTS - 1):
        try:
            wait_listening(process, state.targets[kind].address, log, START_TIMEOUT)
            return
        except PortInUseError:
            process = _start_target(directory, state, kind, free_port())
    wait_listening(process, state.targets[kind].address, log, START_TIMEOUT)


def wait_serving(
    directory: Path, state: ClusterState, started: dict[str, subprocess.Popen[bytes]], progress: Progress
) -> None:
    """Return once every node in `state` reports SERVING to `directory`'s admin identity; ClusterError
    as soon as a process in `started` exits, or after START_TIMEOUT. A node in `started` that exits
    because another process took its port is started again on a free port (PORT_ATTEMPTS starts in
    all; `started` and `state` then hold the new process and address)."""
    identity = admin_identity(directory)
    clients = {e.name: NodeClient(e.address, identity, e.name, timeout=2.0) for e in state.nodes}
    starts = dict.fromkeys(started, 1)
    waiting = [e.name for e in state.nodes]
    deadline = time.monotonic() + START_TIMEOUT
    try:
        while waiting:
            progress(f"waiting for {', '.join(waiting)}", len(state.nodes) - len(waiting), len(state.nodes))
            for name in list(waiting):
                process = started.get(name)
                if process is not None and process.poll() is not None:
                    error = processes.exit_error(
                        f"node {name}", process, ClusterLayout(directory).node(name).log
                    )
                    if not isinstance(error, PortInUseError) or starts[name] == PORT_ATTEMPTS:
                        raise error
                    started[name] = _restart_node_elsewhere(directory, state, state.node(name))
                    starts[name] += 1
                    clients[name].close()
                    clients[name] = NodeClient(state.node(name).address, identity, name, timeout=2.0)
                    continue
                if clients[name].health() == "SERVING":
                    waiting.remove(name)
            if time.monotonic() > deadline:
                raise ClusterError(_not_serving(directory, waiting))
            time.sleep(0.1)
        progress("all nodes SERVING", len(state.nodes), len(state.nodes))
    finally:
        for client in clients.values():
            client.close()


def _not_serving(directory: Path, waiting: list[str]) -> str:
    """The error of nodes still not SERVING at the deadline: which, and where their logs are."""
    logs = ", ".join(str(ClusterLayout(directory).node(name).log) for name in waiting)
    return (
        f"nodes not SERVING after {START_TIMEOUT:.0f} s: {', '.join(waiting)}; their logs say why: {logs} "
        f"(`authsim logs {waiting[0]} --dir {directory}`)"
    )


def register_target_addresses(state: ClusterState) -> None:
    """Record the address of each target and of the real server behind it (`kdc`, `postgres`) in the
    cluster's etcd (no write when unchanged)."""

    async def register() -> None:
        async with EtcdStore(state.etcd.endpoints, tls=state.etcd.tls) as store:
            addresses = {kind: target.address for kind, target in state.targets.items()}
            addresses |= {name: server.address for name, server in state.servers.items()}
            await register_targets(store, state.cluster_name, addresses)

    interrupts.run(register())
