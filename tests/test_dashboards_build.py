"""The Grafana provisioning built from the catalogue (dashboards/build.py): committed and current, well-formed for
Grafana 11.6 (the SDK's own models read it back unchanged), the English build differing only in its texts, and no
household visible on any energy panel. No services needed: these run in well under a second."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from grafana_foundation_sdk.models.dashboard import Dashboard as SdkDashboard

from cityos_cli.cli import main
from dashboards import build, catalog

COMMITTED = build.DEFAULT_OUT
#: Grafana's own macros and the alias patterns: not template variables of ours.
BUILTIN_VARS = {"timeFilter", "__interval", "__interval_ms", "interval", "__from", "__to", "__range", "__range_s",
                "__range_ms", "col", "m", "measurement"}
#: Keys under which a string may differ between the Japanese and the English build.
TEXT_KEYS = {"title", "description", "label", "summary", "name", "alias"}
CJK = re.compile(r"[\u3000-\u30ff\u3400-\u9fff\uff00-\uffef]")


def _files(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _load(rel: str, text: str | bytes) -> Any:
    return json.loads(text) if rel.endswith(".json") else yaml.safe_load(text)


@pytest.fixture(scope="module")
def ja() -> dict[str, Any]:
    return {rel: _load(rel, t) for rel, t in build.render("ja").items()}


@pytest.fixture(scope="module")
def en() -> dict[str, Any]:
    return {rel: _load(rel, t) for rel, t in build.render("en").items()}


def _dashboards(files: dict[str, Any]) -> list[dict[str, Any]]:
    return [d for rel, d in sorted(files.items()) if rel.startswith("dashboards/json/")]


def _panels(d: dict[str, Any]) -> list[dict[str, Any]]:
    return [p for p in d["panels"] if p["type"] != "row"]


def _rules(files: dict[str, Any]) -> list[dict[str, Any]]:
    return [r for g in files["alerting/cityos-rules.yaml"]["groups"] for r in g["rules"]]


def outer(query: str) -> str:
    """The query with every parenthesised subquery (``(SELECT ...)``) cut out: what the outermost level shows."""
    out, i = [], 0
    while i < len(query):
        if query.startswith("(SELECT", i):
            depth = 0
            for j in range(i, len(query)):
                depth += {"(": 1, ")": -1}.get(query[j], 0)
                if depth == 0:
                    break
            out.append("(…)")
            i = j + 1
        else:
            out.append(query[i])
            i += 1
    return "".join(out)


# --------------------------------------------------------------------------------------------------------------
# (a) committed and current


def test_committed_provisioning_is_current(tmp_path):
    build.build(tmp_path, "ja")
    fresh, committed = _files(tmp_path), _files(COMMITTED)
    stale = sorted(rel for rel in set(fresh) | set(committed) if fresh.get(rel) != committed.get(rel))
    assert not stale, f"dashboards/provisioning/ is stale ({', '.join(stale)}): run: cityos dashboards build"


def test_build_is_deterministic_and_removes_dropped_dashboards(tmp_path):
    (tmp_path / "dashboards" / "json").mkdir(parents=True)
    (tmp_path / "dashboards" / "json" / "gone.json").write_text("{}")
    build.build(tmp_path, "ja")
    first = _files(tmp_path)
    build.build(tmp_path, "ja")
    assert _files(tmp_path) == first
    assert "dashboards/json/gone.json" not in first
    assert sorted(r for r in first if r.endswith(".json")) == sorted(
        f"dashboards/json/{d.uid}.json" for d in catalog.DASHBOARDS)


# --------------------------------------------------------------------------------------------------------------
# (b) structure: dashboards


def test_dashboards_read_back_unchanged_by_the_sdk_model(ja):
    for d in _dashboards(ja):
        assert build.to_plain(SdkDashboard.from_json(d)) == d, d["uid"]


def test_dashboard_identity_and_settings(ja):
    uids = [d["uid"] for d in _dashboards(ja)]
    assert uids == sorted(d.uid for d in catalog.DASHBOARDS)
    assert {"cityos-overview", "cityos-forest", "cityos-waste", "cityos-energy", "cityos-fleet"} <= set(uids)
    for d in _dashboards(ja):
        assert d["timezone"] == "Asia/Tokyo" and d["weekStart"] == "monday", d["uid"]
        assert "id" not in d, "provisioned dashboards must not carry an instance id"


def test_panel_ids_unique_and_grid_without_overlap(ja):
    for d in _dashboards(ja):
        ids = [p["id"] for p in d["panels"]]
        assert len(ids) == len(set(ids)), d["uid"]
        cells: set[tuple[int, int]] = set()
        for p in d["panels"]:
            g = p["gridPos"]
            assert g["w"] > 0 and g["h"] > 0 and g["x"] >= 0 and g["y"] >= 0, (d["uid"], p["title"])
            assert g["x"] + g["w"] <= 24, (d["uid"], p["title"], g)
            mine = {(x, y) for x in range(g["x"], g["x"] + g["w"]) for y in range(g["y"], g["y"] + g["h"])}
            assert not cells & mine, f"{d['uid']}: panel {p['title']!r} overlaps another"
            cells |= mine


def test_every_target_is_a_raw_influxql_query_on_our_datasource(ja):
    for d in _dashboards(ja):
        for p in _panels(d):
            where = (d["uid"], p["title"])
            assert p["datasource"] == {"type": "influxdb", "uid": "cityos-influxdb"}, where
            assert p["targets"], where
            refs = [t["refId"] for t in p["targets"]]
            assert len(refs) == len(set(refs)), where
            for t in p["targets"]:
                assert t["rawQuery"] is True and t["query"].startswith(("SELECT", "SHOW")), where
                assert t["datasource"] == {"type": "influxdb", "uid": "cityos-influxdb"}, where
                assert t["resultFormat"] in ("time_series", "table"), where
            assert p["fieldConfig"]["defaults"].get("unit"), f"{where}: no unit"


def test_every_variable_used_is_defined(ja):
    for d in _dashboards(ja):
        defined = {v["name"] for v in d["templating"].get("list", [])}
        for v in d["templating"].get("list", []):
            assert v["query"].startswith("SHOW TAG VALUES FROM"), v
            assert v["datasource"]["uid"] == "cityos-influxdb"
        used: set[str] = set()
        for p in _panels(d):
            for t in p["targets"]:
                for text in (t["query"], t["alias"]):
                    used |= set(re.findall(r"\$\{?(\w+)", text)) | set(re.findall(r"\[\[(\w+)", text))
        used = {u for u in used if u not in BUILTIN_VARS and not u.startswith("tag_")}
        assert used <= defined, f"{d['uid']}: undefined variables {used - defined}"
        assert defined <= used, f"{d['uid']}: variables no query uses {defined - used}"


def test_live_queries_use_the_time_range_and_group_by_time_sensibly():
    for d in catalog.DASHBOARDS:
        for p in d.panels:
            for t in p.targets:
                where = (d.uid, p.title("en"), t.ref_id)
                assert "$timeFilter" in t.query, where
                top = outer(t.query)
                for every in re.findall(r"GROUP BY time\(([^)]*)\)", top):
                    assert every in ("$__interval", "1d", "1d, 30m", "1w, 4d"), (where, every)
                    if every != "$__interval":  # whole days and weeks are Japan's
                        assert "tz('Asia/Tokyo')" in top, where
                if "GROUP BY time(" in top:
                    assert re.search(r"fill\((null|none|0)\)", top), (where, "say how empty buckets are filled")


def test_panel_kinds_are_built_as_such(ja):
    kinds = {(d.uid, p.title("ja")): p.kind for d in catalog.DASHBOARDS for p in d.panels}
    for d in _dashboards(ja):
        for p in _panels(d):
            assert p["type"] == kinds[(d["uid"], p["title"])]
            if p["type"] == "geomap":
                layers = p["options"]["layers"]
                assert [lay["filterData"]["options"] for lay in layers] == [t["refId"] for t in p["targets"]]
                assert all(lay["location"] == {"mode": "coords", "latitude": "lat", "longitude": "lon"}
                           for lay in layers)
                assert all(t["resultFormat"] == "table" for t in p["targets"])


def test_thresholds_come_from_one_place(ja):
    forest = next(d for d in _dashboards(ja) if d["uid"] == "cityos-forest")
    steps = {p["title"]: [s["value"] for s in p["fieldConfig"]["defaults"].get("thresholds", {}).get("steps", [])]
             for p in _panels(forest)}
    assert steps["時間雨量（60分間積算雨量）"][1:] == [catalog.RAIN_INTENSE_MM_H, catalog.RAIN_VERY_INTENSE_MM_H,
                                                catalog.RAIN_EXTREME_MM_H]
    assert steps["連続雨量"][1:] == [catalog.RAIN_CUMULATIVE_CAUTION_MM, catalog.RAIN_CUMULATIVE_WARNING_MM]
    assert steps["傾斜速度（1時間あたり、絶対値）"][1:] == [catalog.TILT_RATE_CAUTION_DEG_H,
                                                  catalog.TILT_RATE_WARNING_DEG_H]
    landslide = next(r for r in catalog.ALERT_RULES if r.uid == "cityos-landslide-warning")
    for text in (f'"soil_moisture_pct" >= {catalog.SOIL_MOISTURE_WARNING_PCT:g}',
                 f'"rain_intensity_mm_h" >= {catalog.RAIN_INTENSE_MM_H:g}',
                 f'"tilt_rate_x_deg_h" >= {catalog.TILT_RATE_WARNING_DEG_H:g}',
                 f'"tilt_rate_y_deg_h" <= -{catalog.TILT_RATE_WARNING_DEG_H:g}'):
        assert text in landslide.query


# --------------------------------------------------------------------------------------------------------------
# (b) structure: alert rules and the other provisioning files


def test_alert_rules_are_well_formed(ja):
    doc = ja["alerting/cityos-rules.yaml"]
    assert doc["apiVersion"] == 1
    uids = []
    for g in doc["groups"]:
        assert g["orgId"] == 1 and g["folder"] == build.FOLDER and g["interval"] == "1m" and g["name"]
        for r in g["rules"]:
            uids.append(r["uid"])
            assert r["title"] and r["uid"].startswith("cityos-"), r
            refs = {q["refId"]: q for q in r["data"]}
            assert len(refs) == len(r["data"]), r["uid"]
            assert r["condition"] in refs, r["uid"]
            assert r["noDataState"] in ("OK", "NoData", "Alerting") and r["execErrState"] in ("OK", "Alerting", "Error")
            assert re.fullmatch(r"\d+[smh]", r["for"]), r["uid"]
            assert r["labels"]["severity"] in ("warning", "critical") and r["annotations"]["summary"]
            for q in r["data"]:
                m = q["model"]
                assert m["refId"] == q["refId"]
                if q["datasourceUid"] == "cityos-influxdb":
                    assert m["rawQuery"] is True and m["query"].startswith("SELECT"), r["uid"]
                    assert m["datasource"] == {"type": "influxdb", "uid": "cityos-influxdb"}
                    assert q["relativeTimeRange"]["from"] > 0 and q["relativeTimeRange"]["to"] == 0
                    assert "$" not in m["query"], f"{r['uid']}: alert queries have no dashboard macros"
                else:
                    assert q["datasourceUid"] == "__expr__", r["uid"]
                    assert m["datasource"] == {"type": "__expr__", "uid": "__expr__"}
                    assert m["type"] in ("reduce", "threshold", "math"), r["uid"]
                    used = re.findall(r"\$\{?(\w+)", m["expression"]) if m["type"] == "math" else [m["expression"]]
                    assert used and all(u in refs and u != q["refId"] for u in used), r["uid"]
            assert refs[r["condition"]]["model"]["type"] == "threshold"
    assert len(uids) == len(set(uids))
    assert uids and sorted(uids) == sorted(r.uid for r in catalog.ALERT_RULES)


def test_alert_rules_on_readings_leave_backfill_out():
    readings = ("forest", "energy", "waste_collection", "waste_trip", "gateway_health", "source_health")
    for r in catalog.ALERT_RULES:
        for q in (r.query, *(q for _ref, q in r.extra_queries)):
            measurements = set(re.findall(r'FROM "(\w+)"', q))
            if measurements & set(readings):
                assert catalog.live_only() in q, r.uid
            else:
                assert "backfill" not in q, f"{r.uid}: {measurements} has no backfill field"
    assert {"cityos-landslide-warning", "cityos-gateway-offline", "cityos-ingest-stalled",
            "cityos-backlog-old"} <= {r.uid for r in catalog.ALERT_RULES}


def test_datasource_and_dashboard_provider(ja):
    ds = ja["datasources/influxdb.yaml"]["datasources"]
    assert len(ds) == 1
    d = ds[0]
    assert d["uid"] == "cityos-influxdb" and d["type"] == "influxdb" and d["access"] == "proxy"
    assert d["jsonData"] == {"dbName": "$INFLUXDB_DB", "httpMode": "POST", "version": "InfluxQL"}
    assert (d["url"], d["user"], d["secureJsonData"]) == (
        "$INFLUXDB_URL", "$INFLUXDB_USER", {"password": "$INFLUXDB_PASSWORD"})
    assert "database" not in d and "password" not in d, "credentials only from the environment"
    prov = ja["dashboards/cityos.yaml"]["providers"]
    assert len(prov) == 1 and prov[0]["type"] == "file"
    assert prov[0]["options"]["path"].endswith("/dashboards/json") and prov[0]["folder"] == build.FOLDER


# --------------------------------------------------------------------------------------------------------------
# (c) English = Japanese but for the texts


def _compare(a: Any, b: Any, path: str, diffs: list[tuple[str, str, str]]) -> None:
    assert type(a) is type(b), path
    if isinstance(a, dict):
        assert a.keys() == b.keys(), path
        for k in a:
            _compare(a[k], b[k], f"{path}/{k}", diffs)
    elif isinstance(a, list):
        assert len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            _compare(x, y, f"{path}[{i}]", diffs)
    elif a != b:
        assert isinstance(a, str), path
        diffs.append((path, a, b))


def test_english_build_differs_only_in_texts(ja, en):
    assert ja.keys() == en.keys()
    diffs: list[tuple[str, str, str]] = []
    for rel in ja:
        _compare(ja[rel], en[rel], rel, diffs)
    assert diffs, "the builds are identical: no translated texts?"
    for path, a, b in diffs:
        key = path.rsplit("/", 1)[-1]
        assert key in TEXT_KEYS, f"{path} differs between the languages: {a!r} / {b!r}"
        assert not CJK.search(b), f"{path}: Japanese left in the English build: {b!r}"
    assert any(CJK.search(a) for _p, a, _b in diffs)
    assert not any(CJK.search(t) for t in build.render("en").values())


# --------------------------------------------------------------------------------------------------------------
# (d) no household on the energy panels


def test_energy_queries_never_show_a_household():
    checked = 0
    for d in catalog.DASHBOARDS:
        for p in d.panels:
            for t in p.targets:
                if '"energy"' not in t.query:
                    continue
                checked += 1
                top = outer(t.query)
                where = (d.uid, p.title("en"), t.ref_id, top)
                assert "device" not in top, where
                assert "*" not in top, where
                assert "tag_device" not in t.alias and (t.legend is None or "tag_device" not in t.legend.en), where
                # every level that groups by household is a subquery whose result is aggregated above it
                assert not re.match(r'SELECT\s+"', top) or "(…)" in top, where
    assert checked >= 8


def test_outer_cuts_subqueries():
    q = 'SELECT sum("a") FROM (SELECT max("b") FROM (SELECT "c" FROM "m" GROUP BY "device") GROUP BY "device") ' \
        'WHERE $timeFilter GROUP BY "district"'
    assert outer(q) == 'SELECT sum("a") FROM (…) WHERE $timeFilter GROUP BY "district"'


# --------------------------------------------------------------------------------------------------------------
# the command


def test_cli_builds_english_elsewhere_and_refuses_to_overwrite_the_committed_build(tmp_path, capsys):
    assert main(["dashboards", "build", "--lang", "en", "--out", str(tmp_path)]) == 0
    assert (tmp_path / "dashboards" / "json" / "cityos-overview.json").exists()
    assert json.loads((tmp_path / "dashboards/json/cityos-forest.json").read_text())["title"] == "Forest and landslides"
    assert main(["dashboards", "build", "--lang", "en"]) == 2
    assert "--out" in capsys.readouterr().err
