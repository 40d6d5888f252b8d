"""Unit files for running dbkeeper under systemd: ``start`` as a service, or ``tick`` from
a timer."""

from __future__ import annotations

from pathlib import Path

SERVICE = """\
[Unit]
Description=dbkeeper: database maintenance scheduler ({config})
Wants=network-online.target
After=network-online.target

[Service]
Type=simple
User={user}
EnvironmentFile=-{env_file}
WorkingDirectory={folder}
ExecStart={dbkeeper} --config {config} start
Restart=on-failure
RestartSec=5
# SIGTERM lets running jobs finish within keeper.shutdown_grace.
KillSignal=SIGTERM
TimeoutStopSec=120

[Install]
WantedBy=multi-user.target
"""

TICK_SERVICE = """\
[Unit]
Description=dbkeeper: run due maintenance jobs once ({config})
Wants=network-online.target
After=network-online.target

[Service]
Type=oneshot
User={user}
EnvironmentFile=-{env_file}
WorkingDirectory={folder}
ExecStart={dbkeeper} --config {config} tick
"""

TIMER = """\
[Unit]
Description=dbkeeper: run due maintenance jobs ({on_calendar})

[Timer]
OnCalendar={on_calendar}
Persistent=true
AccuracySec=1s

[Install]
WantedBy=timers.target
"""


def units(
    *,
    name: str,
    mode: str,
    dbkeeper: Path,
    config: Path,
    user: str,
    env_file: Path,
    on_calendar: str,
) -> dict[str, str]:
    """File name -> content of the units for ``mode`` ("service" or "timer")."""
    values = {
        "dbkeeper": dbkeeper,
        "config": config,
        "folder": config.parent,
        "user": user,
        "env_file": env_file,
        "on_calendar": on_calendar,
    }
    if mode == "service":
        return {f"{name}.service": SERVICE.format(**values)}
    return {
        f"{name}.service": TICK_SERVICE.format(**values),
        f"{name}.timer": TIMER.format(**values),
    }
