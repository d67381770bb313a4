"""`adcache`: the one command-line entry point (click for parsing, rich for tables and progress).

Every command that talks to Redis takes `--url` (default: $REDIS_URL) and `--cluster/--no-cluster`
(default: ask the server). Exit codes: 0 ok, 1 drift or failure, 2 usage error.
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path
from typing import Any

import click
import redis
from rich.console import Console
from rich.table import Table

from adcache_loader import deploy as deploy_mod
from adcache_loader.render import RenderError, write

console = Console()

url_option = click.option(
    "--url",
    envvar="REDIS_URL",
    required=True,
    help="Redis URL of the server or of any cluster node (redis://, rediss://); default $REDIS_URL.",
)
cluster_option = click.option(
    "--cluster/--no-cluster",
    default=None,
    help="Treat the URL as a cluster seed (default: detect).",
)


@click.group()
@click.option("-v", "--verbose", is_flag=True, help="Log what is done.")
def main(verbose: bool) -> None:
    """adcache: deploy and operate the adcache Redis Functions library."""
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
    )


@main.command()
@click.option("--check", is_flag=True, help="Write nothing; exit 1 when a rendered file is stale.")
def render(check: bool) -> None:
    """Render lua/ into functions/adcache.lua, the generated Python and docs/FUNCTIONS.md."""
    try:
        stale = write(check=check)
    except RenderError as e:
        console.print(f"[red]render failed:[/] {e}")
        sys.exit(1)
    if check and stale:
        for p in stale:
            console.print(f"[red]stale:[/] {p}")
        console.print("run `adcache render` (or `make render`) and commit the result")
        sys.exit(1)
    for p in stale:
        console.print(f"wrote {p}")
    if not stale:
        console.print("rendered files are up to date")


@main.command()
@click.option("--all", "every", is_flag=True, help="Every zone (about 8 KB of library).")
@click.argument("names", nargs=-1)
def zones(every: bool, names: tuple[str, ...]) -> None:
    """Rewrite lua/zones.txt (the time zones the library knows by name) from the tzdata package:
    NAMES, or by default every zone with daylight saving or a 30/45-minute offset; then render."""
    from adcache_loader.paths import project_paths
    from adcache_loader.zones import table_text

    path = project_paths().lua / "zones.txt"
    path.write_text(table_text(list(names) or None, every=every))
    console.print(f"wrote {path}")


def _status_table(statuses: list[deploy_mod.NodeStatus]) -> Table:
    table = Table(title="adcache library per node")
    for col in ("node", "role", "state", "version", "sha256", "detail"):
        table.add_column(col)
    colors = {"ok": "green", "stale": "yellow", "loading": "yellow", "flagged": "yellow"}
    for s in statuses:
        color = colors.get(s.state, "red")
        table.add_row(s.node, s.role, f"[{color}]{s.state}[/]", s.version, s.sha256[:12], s.detail)
    return table


def _explain(statuses: list[deploy_mod.NodeStatus]) -> None:
    """One line per kind of problem, saying what to do about it."""
    states = {s.state for s in statuses}
    if "unreachable" in states:
        console.print(
            "[red]unreachable:[/] a node the cluster knows does not answer; its slots are not "
            "served until it is back (or failed over); then run `adcache deploy`"
        )
    if "flagged" in states:
        console.print(
            "[yellow]flagged:[/] the cluster still marks a node as failed; wait for it to clear "
            "(a few node timeouts), then run `adcache verify` again"
        )
    if "loading" in states:
        console.print("[yellow]loading:[/] a node is still loading its dataset; run it again")
    if states & {"missing", "stale", "error"}:
        console.print("[red]drift:[/] run `adcache deploy` to bring every node in line")


def _connect_failure(url: str, e: Exception) -> None:
    console.print(f"[red]cannot reach {url}:[/] {type(e).__name__}: {e}")
    sys.exit(1)


@main.command()
@url_option
@cluster_option
@click.option(
    "--save",
    is_flag=True,
    help="BGSAVE on every primary after loading, so an RDB-only server keeps the library.",
)
@click.option(
    "--loading-wait",
    type=click.FloatRange(0),
    default=30.0,
    show_default=True,
    help="Seconds to keep retrying a primary that is loading its dataset.",
)
def deploy(url: str, cluster: bool | None, save: bool, loading_wait: float) -> None:
    """Load the library on the server or on every primary of the cluster, then verify.

    Exit 1 unless every node the cluster knows serves the library."""
    try:
        with console.status("deploying adcache..."):
            statuses = deploy_mod.deploy(
                url, cluster, save=save, loading_wait_s=loading_wait, progress=console.print
            )
    except (redis.ConnectionError, redis.TimeoutError) as e:
        _connect_failure(url, e)
    console.print(_status_table(statuses))
    for s in statuses:
        if s.warning:
            console.print(f"[yellow]warning:[/] {s.node}: {s.warning}")
    if not all(s.in_sync for s in statuses):
        _explain(statuses)
        sys.exit(1)


@main.command()
@url_option
@cluster_option
def verify(url: str, cluster: bool | None) -> None:
    """Report per node whether the deployed library is ok, stale, missing, loading, flagged
    (failed in the cluster's view) or unreachable; exit 1 unless every node is ok."""
    try:
        statuses = deploy_mod.verify(url, cluster)
    except (redis.ConnectionError, redis.TimeoutError) as e:
        _connect_failure(url, e)
    console.print(_status_table(statuses))
    if not all(s.in_sync for s in statuses):
        _explain(statuses)
        sys.exit(1)


@main.command()
@url_option
@cluster_option
@click.argument("path", type=click.Path(dir_okay=False, path_type=Path))
def dump(url: str, cluster: bool | None, path: Path) -> None:
    """Back up the deployed functions (FUNCTION DUMP) to PATH."""
    try:
        payload = deploy_mod.dump(url, cluster)
    except RuntimeError as e:
        console.print(f"[red]dump failed:[/] {e}")
        sys.exit(1)
    path.write_bytes(payload)
    console.print(f"wrote {len(payload)} bytes to {path}")


@main.command()
@url_option
@cluster_option
@click.option(
    "--policy",
    type=click.Choice(["REPLACE", "FLUSH", "APPEND"]),
    default="REPLACE",
    show_default=True,
)
@click.argument("path", type=click.Path(exists=True, dir_okay=False, path_type=Path))
def restore(url: str, cluster: bool | None, policy: str, path: Path) -> None:
    """Restore functions from a FUNCTION DUMP file on every primary."""
    try:
        done = deploy_mod.restore(url, path.read_bytes(), cluster, policy)
    except RuntimeError as e:
        console.print(f"[red]restore incomplete:[/] {e}")
        sys.exit(1)
    console.print(f"restored on {', '.join(done)}")


@main.command()
@click.option(
    "--url", envvar="REDIS_URL", default=None, help="Use this Redis instead of a throwaway one."
)
def demo(url: str | None) -> None:
    """A short tour: start a throwaway Redis (unless --url/$REDIS_URL), deploy, run a scenario."""
    from adcache_loader.demo import run_demo

    sys.exit(run_demo(url, console))


@main.command()
@click.option(
    "--url", envvar="REDIS_URL", default=None, help="Apply to this server/cluster (else print)."
)
@click.option(
    "--cluster/--no-cluster",
    default=None,
    help="Treat the URL as a cluster seed (default: detect).",
)
@click.option(
    "--role",
    "roles",
    multiple=True,
    help="A role to create as user adcache-<role>: a preset (reader, tracker, bidder, campaigns, "
    "users, cache, app) or NAME=DOMAIN[,DOMAIN...] (domains, or `read` for read-only access to "
    "all). Repeatable. Default: app.",
)
@click.option(
    "--password",
    "passwords",
    multiple=True,
    metavar="ROLE=SECRET",
    help="Password of a role's user (else $ADCACHE_<ROLE>_PASSWORD). Repeatable.",
)
@click.option("--app-user", default="adcache-app", show_default=True)
@click.option("--app-password", envvar="ADCACHE_APP_PASSWORD", default=None)
@click.option("--deploy-user", default="adcache-deploy", show_default=True)
@click.option("--deploy-password", envvar="ADCACHE_DEPLOY_PASSWORD", default=None)
@click.option(
    "--allow-open-default",
    is_flag=True,
    help="Apply even though the `default` user is open (nopass, every command).",
)
def acl(
    url: str | None,
    cluster: bool | None,
    roles: tuple[str, ...],
    passwords: tuple[str, ...],
    app_user: str,
    app_password: str | None,
    deploy_user: str,
    deploy_password: str | None,
    allow_open_default: bool,
) -> None:
    """ACL users derived from the library: the deploy user (FUNCTION LOAD and inspection) and one
    user per role (the commands its functions run, on its domains' key patterns only). Prints the
    ACL SETUSER lines, or applies them on every node with --url and every password.

    A user that may call a function also holds the commands that function runs, on those keys,
    directly (Redis checks them against the caller): see docs/security.md."""
    from adcache_loader import acl as acl_mod

    given: dict[str, str] = {}
    for item in passwords:
        role, sep, secret = item.partition("=")
        if not sep or not role:
            raise click.UsageError(f"--password wants ROLE=SECRET, got {item!r}")
        given[role] = secret
    users: list[tuple[acl_mod.AclUser, str | None]] = []
    for spec in roles or ("app",):
        try:
            role, domains = acl_mod.parse_role(spec)
        except ValueError as e:
            raise click.UsageError(str(e)) from e
        if role == "app":
            name, password = app_user, app_password or given.get("app")
        else:
            name = f"adcache-{role}"
            env = f"ADCACHE_{role.upper().replace('-', '_')}_PASSWORD"
            password = given.get(role) or os.environ.get(env)
        users.append((acl_mod.role_user(name, domains), password))
    users.append((acl_mod.deploy_user(deploy_user), deploy_password or given.get("deploy")))
    if url is None:
        for user, _ in users:
            console.print(user.command_text(), soft_wrap=True, highlight=False)
        console.print(
            f"# roles: {', '.join(acl_mod.ROLES)}; "
            "keep the default user closed: ACL SETUSER default off (or give it a password)",
            soft_wrap=True,
            highlight=False,
        )
        return
    missing = [u.name for u, p in users if p is None]
    if missing:
        raise click.UsageError(f"passwords are needed to apply: {', '.join(missing)}")
    try:
        with deploy_mod.nodes(url, cluster) as ns:
            down = [n.name for n in ns if n.problem]
            if down:
                console.print(f"[red]unreachable:[/] {', '.join(down)}; nothing applied")
                sys.exit(1)
            open_on = [n.name for n in ns if acl_mod.default_user_open(n.client)]
            if open_on and not allow_open_default:
                console.print(
                    f"[red]refused:[/] the `default` user is open (on, nopass, +@all) on "
                    f"{', '.join(open_on)}: anyone who reaches the port has every command, so "
                    "these users would restrict nothing. Close it first (ACL SETUSER default "
                    "off, or give it a password: ACL SETUSER default >secret), or pass "
                    "--allow-open-default to apply anyway.",
                    soft_wrap=True,
                )
                sys.exit(1)
            for n in ns:
                for user, password in users:
                    dropped = acl_mod.apply_user(n.client, user, password or "")
                    if dropped:
                        console.print(
                            f"{n.name}: {user.name} without {' '.join(dropped)} (unknown there)"
                        )
                console.print(f"ACL users set on {n.name}")
            if open_on:
                console.print(
                    f"[yellow]warning:[/] the `default` user is still open on {', '.join(open_on)}"
                )
    except (redis.ConnectionError, redis.TimeoutError) as e:
        _connect_failure(url, e)


def _cache(url: str, cluster: bool | None) -> Any:
    from adcache import AdCache

    return AdCache.from_url(url, cluster=cluster)


@main.command()
@url_option
@cluster_option
@click.option("--port", type=int, default=9121, show_default=True, help="HTTP port of /metrics.")
@click.option("--addr", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--once", is_flag=True, help="Print one scrape to stdout and exit.")
def metrics(url: str, cluster: bool | None, port: int, addr: str, once: bool) -> None:
    """Serve Prometheus metrics of every node (health, adcache counters) on --port."""
    import time

    from adcache.metrics import exposition, serve

    cache = _cache(url, cluster)
    try:
        if once:
            click.echo(exposition(cache), nl=False)
            return
        server, _ = serve(cache, port, addr)
        console.print(f"serving adcache metrics on http://{addr}:{server.server_port}/metrics")
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            server.shutdown()
    finally:
        cache.close()


@main.command()
@url_option
@cluster_option
@click.option(
    "--interval", type=float, default=2.0, show_default=True, help="Seconds between refreshes."
)
@click.option("--iterations", type=int, default=0, help="Stop after N refreshes (0: until Ctrl-C).")
@click.option("--once", is_flag=True, help="Draw once and exit (same as --iterations 1).")
@click.option("--campaign", "campaigns", multiple=True, help="Also show today's stats of CAMPAIGN.")
@click.option("--offset", type=int, default=0, help="Stats UTC offset in seconds.")
@click.option("--zone", default="", help="Stats time zone (IANA name), instead of --offset.")
def top(
    url: str,
    cluster: bool | None,
    interval: float,
    iterations: int,
    once: bool,
    campaigns: tuple[str, ...],
    offset: int,
    zone: str,
) -> None:
    """A live dashboard: node health, hit rate, memory, adcache counters, campaigns."""
    import time

    from rich.live import Live

    from adcache.stats import StatsConfig
    from adcache_loader.dashboard import top_view

    cache = _cache(url, cluster)
    cache.stats.config = StatsConfig(offset_s=offset, zone=zone)
    n = 1 if once else iterations
    try:
        with Live(
            console=console, auto_refresh=False, transient=False, vertical_overflow="visible"
        ) as live:
            i = 0
            while True:
                live.update(top_view(cache, campaigns), refresh=True)
                i += 1
                if n and i >= n:
                    break
                time.sleep(interval)
    except KeyboardInterrupt:
        pass
    finally:
        cache.close()


@main.command(name="stats")
@url_option
@cluster_option
@click.argument("campaign")
@click.option("--days", type=click.IntRange(1, 90), default=None, help="Last N days (default 7).")
@click.option("--hours", type=click.IntRange(1, 168), default=None, help="Last N hours instead.")
@click.option("--offset", type=int, default=0, help="Stats UTC offset in seconds.")
@click.option("--zone", default="", help="Stats time zone (IANA name), instead of --offset.")
@click.option("--series", is_flag=True, help="Also show the value of every bucket.")
def stats_cmd(
    url: str,
    cluster: bool | None,
    campaign: str,
    days: int | None,
    hours: int | None,
    offset: int,
    zone: str,
    series: bool,
) -> None:
    """Summary of CAMPAIGN over the last N days or hours, with CTR, CVR, CPC, CPM and ROAS."""
    from adcache.stats import StatsConfig
    from adcache_loader.dashboard import series_view, summary_view

    if days is not None and hours is not None:
        raise click.UsageError("give --days or --hours, not both")
    cache = _cache(url, cluster)
    cache.stats.config = StatsConfig(offset_s=offset, zone=zone)
    try:
        if hours is not None:
            s = cache.stats.summary(campaign, hours=hours)
        else:
            s = cache.stats.summary(campaign, days=days or 7)
        console.print(summary_view([s]))
        if series:
            console.print(series_view(cache.stats.series(campaign, s.unit, s.buckets)))  # type: ignore[arg-type]
    finally:
        cache.close()


@main.command()
@url_option
@cluster_option
@click.option(
    "--count",
    type=click.IntRange(1, 10_000),
    default=200,
    show_default=True,
    help="SCAN COUNT per step.",
)
@click.option(
    "--max-keys",
    type=click.IntRange(1),
    default=100_000,
    show_default=True,
    help="Stop after this many keys.",
)
@click.option(
    "--max-report",
    type=click.IntRange(1),
    default=50,
    show_default=True,
    help="Keys listed per problem.",
)
def audit(url: str, cluster: bool | None, count: int, max_keys: int, max_report: int) -> None:
    """Key hygiene: SCAN every primary (bounded) for adcache keys without a TTL or of an unknown
    pattern or type. Exit 1 when it finds any."""
    from adcache_loader.dashboard import audit_view

    cache = _cache(url, cluster)
    try:
        report = cache.monitor.audit(count=count, max_keys=max_keys, max_report=max_report)
    finally:
        cache.close()
    console.print(audit_view(report))
    if not report.ok:
        sys.exit(1)


@main.command()
@click.option(
    "--url", envvar="REDIS_URL", default=None, help="Use this server/cluster (else start one)."
)
@click.option(
    "--cluster/--no-cluster",
    default=None,
    help="With --url: treat it as a cluster seed (default: detect). Without: start a local 3-primary cluster.",
)
@click.option(
    "--requests",
    "n_requests",
    type=click.IntRange(1, 1_000_000),
    default=2000,
    show_default=True,
    help="Requests to serve.",
)
@click.option(
    "--users",
    type=click.IntRange(1, 1_000_000),
    default=500,
    show_default=True,
    help="Users in the population.",
)
@click.option(
    "--campaigns",
    type=click.IntRange(1, 10_000),
    default=60,
    show_default=True,
    help="Campaigns in the population.",
)
@click.option(
    "--threads",
    type=click.IntRange(1, 64),
    default=4,
    show_default=True,
    help="Client threads (each its own client).",
)
@click.option(
    "--seed", type=int, default=7, show_default=True, help="Seed of the generated population."
)
def simulate(
    url: str | None,
    cluster: bool | None,
    n_requests: int,
    users: int,
    campaigns: int,
    threads: int,
    seed: int,
) -> None:
    """Generate users, campaigns and sessions, serve --requests ad requests through the decision
    path, then audit the stored state (served rate, spend, cap violations, overspend, latency).
    Exit 1 when an invariant does not hold."""
    from adcache_loader.simulate import run_simulation

    sys.exit(
        simulate_run(url, cluster, n_requests, users, campaigns, threads, seed, run_simulation)
    )


def simulate_run(
    url: str | None,
    cluster: bool | None,
    n_requests: int,
    users: int,
    campaigns: int,
    threads: int,
    seed: int,
    runner: Any,
) -> int:
    """Start what is needed, run the simulation with a progress bar, print the figures."""
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
    )

    from adcache_loader.servers import LocalCluster, RedisServer

    owned: Any = None
    if url is None:
        if cluster:
            owned = LocalCluster(3, 0)
            owned.start()
            url = owned.seed_url
        else:
            owned = RedisServer()
            owned.start()
            url = owned.url
        console.print(f"started a throwaway {'cluster' if cluster else 'redis-server'} at {url}")
        deploy_mod.deploy(url, cluster)
    try:
        with Progress(
            TextColumn("[bold]decisions"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeRemainingColumn(),
            console=console,
        ) as bar:
            task = bar.add_task("decisions", total=n_requests)
            report = runner(
                url,
                cluster=cluster,
                requests=n_requests,
                users=users,
                campaigns=campaigns,
                threads=threads,
                seed=seed,
                progress=lambda n: bar.advance(task, n),
            )
        from adcache_loader.simulate import summary_rows

        table = Table(title="simulation")
        table.add_column("figure")
        table.add_column("value")
        for name, value in summary_rows(report):
            table.add_row(name, value)
        console.print(table)
        return 0 if report.audit.ok and not report.result.errors else 1
    finally:
        if owned is not None:
            owned.stop()


if __name__ == "__main__":  # pragma: no cover
    main(prog_name=os.path.basename(sys.argv[0]))
