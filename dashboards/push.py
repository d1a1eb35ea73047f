"""``cityos dashboards push``: upsert the datasource, folder, dashboards and alert rules into a running Grafana.

The committed provisioning files (``dashboards/provisioning/``) are the one source: push reads them, so what a
city provisions from files and what it pushes over the API are the same objects with the same uids. Each object
is created or updated by uid (never duplicated), so pushing twice changes nothing.

Environment references in the datasource file (``$INFLUXDB_URL``, ``${INFLUXDB_PASSWORD}``) are expanded from
this process's environment, as Grafana expands them when it reads the file; a missing variable is an error
that names it, not an empty password.

Uses grafana-client (HTTP API: ``/api/datasources``, ``/api/folders``, ``/api/dashboards/db``,
``/api/v1/provisioning/alert-rules``, ``/api/v1/provisioning/folder/<uid>/rule-groups/<group>``).
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

PROVISIONING = Path(__file__).resolve().parent / "provisioning"
FOLDER_UID = "cityos"
FOLDER_TITLE = "CityOS"
_ENV_REF = re.compile(r"\$\$|\$\{(\w+)\}|\$(\w+)")


class PushError(RuntimeError):
    """A push that could not be completed; the message says which object and why."""


@dataclass
class PushReport:
    created: list[str] = field(default_factory=list)
    updated: list[str] = field(default_factory=list)

    def summary(self) -> str:
        return f"{len(self.created)} created, {len(self.updated)} updated"


def expand_env(value: Any, env: Mapping[str, str]) -> Any:
    """Expand ``$NAME`` / ``${NAME}`` in every string of a YAML tree, as Grafana's provisioning does."""
    if isinstance(value, str):

        def sub(m: re.Match[str]) -> str:
            if m.group(0) == "$$":  # Grafana's escape for a literal dollar
                return "$"
            name = m.group(1) or m.group(2)
            if name not in env:
                raise PushError(f"environment variable {name} is not set (the datasource file refers to it)")
            return env[name]

        return _ENV_REF.sub(sub, value)
    if isinstance(value, list):
        return [expand_env(v, env) for v in value]
    if isinstance(value, dict):
        return {k: expand_env(v, env) for k, v in value.items()}
    return value


def load(provisioning: Path = PROVISIONING, env: Mapping[str, str] | None = None) -> dict[str, Any]:
    """The objects to push, read from the provisioning files."""
    env = os.environ if env is None else env
    datasources: list[dict[str, Any]] = []
    for f in sorted((provisioning / "datasources").glob("*.yaml")):
        datasources += expand_env(yaml.safe_load(f.read_text(encoding="utf-8")).get("datasources", []), env)
    dashboards = [json.loads(f.read_text(encoding="utf-8"))
                  for f in sorted((provisioning / "dashboards").rglob("*.json"))]
    groups: list[dict[str, Any]] = []
    for f in sorted((provisioning / "alerting").glob("*.yaml")):
        groups += yaml.safe_load(f.read_text(encoding="utf-8")).get("groups", [])
    return {"datasources": datasources, "dashboards": dashboards, "groups": groups}


def _duration_s(text: str | int) -> int:
    if isinstance(text, int):
        return text
    m = re.fullmatch(r"(\d+)([smhd])", text.strip())
    if not m:
        raise PushError(f"cannot read the rule group interval {text!r}")
    return int(m.group(1)) * {"s": 1, "m": 60, "h": 3600, "d": 86400}[m.group(2)]


def push(url: str, token: str, provisioning: Path = PROVISIONING, env: Mapping[str, str] | None = None,
         timeout_s: float = 10.0) -> PushReport:
    """Upsert everything into the Grafana at ``url`` (service-account token ``token``)."""
    from grafana_client import GrafanaApi
    from grafana_client.client import GrafanaClientError, GrafanaException

    objs = load(provisioning, env)
    api = GrafanaApi.from_url(url, credential=token, timeout=timeout_s)
    report = PushReport()

    def exists(get: Any, *args: Any) -> bool:
        try:
            get(*args)
        except GrafanaClientError as exc:
            if getattr(exc, "status_code", None) == 404:
                return False
            raise
        return True

    try:
        for ds in objs["datasources"]:
            body = {k: v for k, v in ds.items() if k not in ("orgId", "editable", "version")}
            if exists(api.datasource.get_datasource_by_uid, ds["uid"]):
                api.datasource.update_datasource_by_uid(ds["uid"], body)
                report.updated.append(f"datasource {ds['uid']}")
            else:
                api.datasource.create_datasource(body)
                report.created.append(f"datasource {ds['uid']}")
        if exists(api.folder.get_folder, FOLDER_UID):
            report.updated.append(f"folder {FOLDER_UID}")
        else:
            api.folder.create_folder(FOLDER_TITLE, uid=FOLDER_UID)
            report.created.append(f"folder {FOLDER_UID}")
        for d in objs["dashboards"]:
            new = not exists(api.dashboard.get_dashboard, d["uid"])
            api.dashboard.update_dashboard(
                {"dashboard": {**d, "id": None}, "folderUid": FOLDER_UID, "overwrite": True,
                 "message": "cityos dashboards push"}
            )
            (report.created if new else report.updated).append(f"dashboard {d['uid']}")
        for g in objs["groups"]:
            rules = [{**r, "folderUID": FOLDER_UID, "ruleGroup": g["name"], "orgID": g.get("orgId", 1)}
                     for r in g.get("rules", [])]
            for body in rules:
                if exists(api.alertingprovisioning.get_alertrule, body["uid"]):
                    api.alertingprovisioning.update_alertrule(body["uid"], body)
                    report.updated.append(f"alert rule {body['uid']}")
                else:
                    api.alertingprovisioning.create_alertrule(body)
                    report.created.append(f"alert rule {body['uid']}")
            # The group's evaluation interval lives on the group; its PUT replaces the group's rule list, so it
            # carries all of them (a PUT with the interval alone would delete the rules).
            api.alertingprovisioning.update_rule_group(
                FOLDER_UID, g["name"],
                {"title": g["name"], "folderUid": FOLDER_UID, "interval": _duration_s(g.get("interval", "1m")),
                 "rules": rules},
            )
    except GrafanaException as exc:
        raise PushError(f"Grafana at {url} refused: {exc}") from None
    except OSError as exc:
        raise PushError(f"cannot reach Grafana at {url}: {exc}") from None
    return report
