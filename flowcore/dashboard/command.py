"""``flowcore dashboard [--host 127.0.0.1] [--port 4300] [--open]``.

Serves the dashboard (:mod:`flowcore.dashboard.app`) with uvicorn until Ctrl-C. Binds
the loopback address by default; any other address must be given with ``--host`` and
prints a warning (the dashboard has no authentication and shows parameters, logs and
tracebacks). While bound to loopback, requests whose Host header is not a loopback
name are refused (a guard against DNS rebinding).

The deployment webhook (``POST /api/deployments/{flow}/{name}/runs`` and friends) is
served too, with the rules of ``flowcore worker start --webhook-port``: every call
needs ``Authorization: Bearer <token>`` (``FLOWCORE_API_TOKEN``, or the token in
``$FLOWCORE_HOME/api-token``, generated on first start and printed once).

Raises :class:`~flowcore.errors.DashboardError` when starlette, uvicorn or Jinja2 are
missing (the message says ``pip install "flowcore[ui]"``) or the port is taken.
"""

from __future__ import annotations

import argparse
import errno
import ipaddress
import socket
import sys
import threading
from pathlib import Path
from typing import Any

from flowcore.errors import DashboardError

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 4300
LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1", "[::1]")


def is_loopback(host: str) -> bool:
    """True for ``localhost`` and addresses in 127.0.0.0/8 or ``::1``."""
    if host.strip("[]") == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def exposure_warning(host: str) -> str | None:
    """The warning printed when the dashboard binds ``host``; None for loopback."""
    if is_loopback(host):
        return None
    return (
        f"warning: the dashboard is listening on {host}, not only on this machine: anyone who can "
        "reach it reads your run history (parameters, logs, tracebacks) without a password. "
        "Bind 127.0.0.1 (the default) and use an SSH tunnel to look from elsewhere."
    )


def _require_ui() -> None:
    missing = []
    for module in ("starlette", "uvicorn", "jinja2"):
        try:
            __import__(module)
        except ImportError:
            missing.append(module)
    if missing:
        raise DashboardError(
            f"flowcore dashboard needs {', '.join(missing)}; install them with: pip install \"flowcore[ui]\""
        )


def port_number(text: str) -> int:
    """``--port``'s type: a TCP port, 1 to 65535 (argparse reports anything else)."""
    try:
        port = int(text)
    except ValueError:
        port = -1
    if not 1 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"{text} is not a port number (1 to 65535)")
    return port


def _check_port(host: str, port: int) -> None:
    """Raise DashboardError, saying which option to change, unless ``host:port`` can be bound."""
    family = socket.AF_INET6 if ":" in host.strip("[]") else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host.strip("[]"), port))
        except OSError as exc:
            taken = exc.errno in (errno.EADDRINUSE, errno.EACCES)
            fix = "choose another port with --port" if taken else f"check --host ({host!r} is not an address of this machine)"
            raise DashboardError(f"cannot listen on {host}:{port} ({exc.strerror or exc}); {fix}") from None


def serve(host: str = DEFAULT_HOST, port: int = DEFAULT_PORT, *, open_browser: bool = False) -> int:
    """Run the dashboard over the configured history store until interrupted."""
    _require_ui()
    import uvicorn

    from flowcore.dashboard.app import create_app
    from flowcore.history.commands import open_for_cli

    _check_port(host, port)
    warning = exposure_warning(host)
    if warning:
        print(warning, file=sys.stderr)
    store = open_for_cli()
    try:
        allowed = list(LOOPBACK_NAMES) if is_loopback(host) else None
        token: str | None = None
        history_path = getattr(store, "path", None)
        if isinstance(history_path, Path):
            from flowcore.deployments.webhook import TOKEN_FILE, api_token

            token, generated = api_token(history_path.parent)
            if generated:
                print(f"generated the API token for the deployment webhook (shown once; kept in "
                      f"{history_path.parent / TOKEN_FILE}): {token}", flush=True)
        app = create_app(store, allowed_hosts=allowed, api_token=token)
        shown = f"[{host}]" if ":" in host and not host.startswith("[") else host
        url = f"http://{shown}:{port}/"
        print(f"flowcore dashboard on {url} (history: {store.location}); Ctrl-C to stop", flush=True)
        print(f"webhook: POST {url}api/deployments/<flow>/<deployment>/runs (Authorization: Bearer <token>)",
              flush=True)
        if open_browser:
            import webbrowser

            threading.Timer(0.8, webbrowser.open, args=(url,)).start()
        config = uvicorn.Config(app, host=host.strip("[]"), port=port, log_level="warning",
                                timeout_graceful_shutdown=2, access_log=False)
        board = app.state.dashboard

        class Server(uvicorn.Server):
            def handle_exit(self, sig: int, frame: Any) -> None:
                board.closed = True  # end the event streams, so shutdown needs no timeout
                super().handle_exit(sig, frame)

        Server(config).run()
    finally:
        store.close()
    return 0


def _dashboard(args: argparse.Namespace) -> int:
    return serve(args.host, args.port, open_browser=args.open)


def add_command(commands: Any) -> None:
    """Declare ``flowcore dashboard`` on the CLI's subparsers (imports nothing heavy)."""
    parser = commands.add_parser(
        "dashboard", help="serve a local web dashboard over the run history (needs flowcore[ui])",
        description="Serve the run-history dashboard. It binds 127.0.0.1 unless --host says otherwise; "
        "it has no authentication, so binding another address prints a warning.",
    )
    parser.add_argument("--host", default=DEFAULT_HOST, help=f"address to bind (default {DEFAULT_HOST}: this machine only)")
    parser.add_argument("--port", type=port_number, default=DEFAULT_PORT, help=f"port (default {DEFAULT_PORT})")
    parser.add_argument("--open", action="store_true", help="open the dashboard in a web browser")
    parser.set_defaults(handler=_dashboard)


__all__ = ["DEFAULT_HOST", "DEFAULT_PORT", "add_command", "exposure_warning", "is_loopback", "serve"]
