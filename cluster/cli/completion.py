"""Shell completion beyond click's own (options, commands, choices, files): CA types, the node names
of the dir's cluster.yaml, resource names and log names. Enabled per shell as the README says, e.g.
`eval "$(_AUTHCTL_COMPLETE=bash_source authctl)"`. A completion never fails: no cluster, no names."""

from __future__ import annotations

import click
import yaml
from click.shell_completion import CompletionItem

from authsim.cluster.layout import ClusterLayout
from authsim.cluster.local.state import ClusterState, cluster_dir
from authsim.cluster.resources.ca_types import CA_TYPES

OVERRIDES = [f"ca_overrides/{t}" for t in CA_TYPES]
CERT_AUTHORITIES = [f"cas/{t}" for t in CA_TYPES]


def _items(words: list[str], incomplete: str) -> list[CompletionItem]:
    return [CompletionItem(w) for w in words if w.startswith(incomplete)]


def ca_types(ctx: click.Context, param: click.Parameter, incomplete: str) -> list[CompletionItem]:
    """`--type`: the CA types."""
    return [CompletionItem(t, help=c.description) for t, c in CA_TYPES.items() if t.startswith(incomplete)]


def node_names(ctx: click.Context, param: click.Parameter, incomplete: str) -> list[CompletionItem]:
    """`--node`, `authsim hsm ACTION NODE`: the nodes of the cluster.yaml in --dir (given before it on
    the line), $AUTHSIM_DIR or ./.authsim."""
    return _items(_node_names(ctx), incomplete)


def log_names(ctx: click.Context, param: click.Parameter, incomplete: str) -> list[CompletionItem]:
    """`authsim logs NAME`: the nodes, then etcd, the targets and their servers."""
    return _items(list(ClusterLayout(cluster_dir(_directory(ctx))).logs()), incomplete)


def any_resource(ctx: click.Context, param: click.Parameter, incomplete: str) -> list[CompletionItem]:
    """`authctl get`: every resource it shows."""
    return _items([*CERT_AUTHORITIES, "ca_overrides", *OVERRIDES, "events"], incomplete)


def removable(ctx: click.Context, param: click.Parameter, incomplete: str) -> list[CompletionItem]:
    """`authctl rm`: an override resource, or a CA."""
    return _items([*OVERRIDES, *CERT_AUTHORITIES], incomplete)


def override(ctx: click.Context, param: click.Parameter, incomplete: str) -> list[CompletionItem]:
    """`authctl edit`, `authsim watch`: an override resource."""
    return _items(OVERRIDES, incomplete)


def _directory(ctx: click.Context) -> str | None:
    """The --dir given on the line so far, on this command or a group above it."""
    for context in (ctx, *_parents(ctx)):
        directory = context.params.get("directory")
        if directory:
            return str(directory)
    return None


def _parents(ctx: click.Context) -> list[click.Context]:
    parents = []
    while ctx.parent is not None:
        ctx = ctx.parent
        parents.append(ctx)
    return parents


def _node_names(ctx: click.Context) -> list[str]:
    path = cluster_dir(_directory(ctx))
    if not ClusterState.path(path).exists():
        return []
    try:
        return [n.name for n in ClusterState.load(path).nodes]
    except (OSError, ValueError, KeyError, TypeError, yaml.YAMLError):  # no traceback into the shell
        return []
