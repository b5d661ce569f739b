"""`calltrackd run | check-config | route-check | --version`."""

from __future__ import annotations

import argparse
import sys

from . import __version__
from .b2bua import route_check
from .config import DEFAULT_PATH, ConfigError, Settings, load_config


def _load(path: str | None) -> Settings | None:
    try:
        return load_config(path)
    except ConfigError as exc:
        for line in exc.problems:
            print(line, file=sys.stderr)
        return None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="calltrackd", description=__doc__)
    parser.add_argument("--version", action="version", version=f"calltrackd {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run the daemon in the foreground")
    run.add_argument("--config", metavar="FILE", help="TOML configuration")
    check = sub.add_parser("check-config", help="validate a configuration file")
    check.add_argument("--config", metavar="FILE", required=True, help="TOML configuration")
    route_check.add_arguments(sub.add_parser(
        "route-check", help="which routing rule a call would meet, and why"))
    args = parser.parse_args(argv)

    settings = _load(args.config)
    if settings is None:
        return 2
    if args.command == "route-check":
        return route_check.run(settings, args)
    if args.command == "check-config":
        print(f"ok: {len(settings.trackers)} trackers, {len(settings.carriers)} carriers")
        return 0
    from .app import run as run_app
    from .logging import configure_logging

    configure_logging(settings.log)
    _warn_defaults(settings)
    return run_app(settings)


def _warn_defaults(settings: Settings) -> None:
    """A daemon started without a configuration (or without carriers) says so loudly."""
    import structlog

    log = structlog.get_logger("calltrackd")
    listen = [f"{x.transport}:{x.host}:{x.port}" for x in settings.sip.listen]
    if settings.source is None:
        log.warning(
            "config.defaults",
            message=f"NO CONFIGURATION FILE: running on built-in defaults ({DEFAULT_PATH} "
                    "not found and no --config given)",
            sip=listen, http=f"{settings.http.host}:{settings.http.port}",
            store=settings.store.url, carriers=0, trackers=0,
            hint="SIP listens on all interfaces and no carrier may call: every INVITE "
                 "gets 403. Start with --config FILE (config/calltrackd.toml is an example)")
    elif not settings.carriers:
        log.warning("config.no_carriers", sip=listen,
                    message="no [[carriers]] configured: every INVITE gets 403")


if __name__ == "__main__":
    sys.exit(main())
