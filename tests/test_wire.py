"""The wire contract: what a gateway may send, what the ingest turns into InfluxDB points."""

from __future__ import annotations

import ast
import json
import time
from pathlib import Path

import jsonschema
import pytest

from cityos import wire
from ingest import lineproto

ROOT = Path(__file__).resolve().parents[1]
NOW = int(time.time() * 1000)
TOPIC = "cityos/v1/gw-1/telemetry"


def _batch(**over) -> dict:
    d = {
        "v": 1,
        "gateway_id": "gw-1",
        "boot_id": "0123456789abcdef",
        "seq": 7,
        "sent_at": NOW,
        "readings": [
            {
                "device_id": "forest-01",
                "kind": "forest_station",
                "ts": NOW - 1000,
                "values": {"soil_moisture_pct": 31.4, "rain_tips": 5, "ok": True, "state": "joined"},
                "units": {"soil_moisture_pct": "%VWC"},
            }
        ],
    }
    d.update(over)
    return d


def _raw(d: dict) -> bytes:
    return json.dumps(d).encode()


def test_roundtrip_and_line_protocol():
    b = wire.decode_batch(TOPIC, _raw(_batch()), now_ms=NOW)
    assert lineproto.batch_to_lines(b) == [
        f'forest,device=forest-01,gateway=gw-1 ok=true,rain_tips=5.0,soil_moisture_pct=31.4,state="joined",backfill=false {NOW - 1000}'
    ]


def test_backfill_is_a_field_not_a_tag():
    d = _batch()
    d["readings"][0]["backfill"] = True
    line = lineproto.batch_to_lines(wire.decode_batch(TOPIC, _raw(d), now_ms=NOW))[0]
    tags, fields, _ = line.split(" ")
    assert "backfill" not in tags and fields.endswith(",backfill=true")


def test_extra_tags_are_sorted_into_the_series_key():
    d = _batch()
    d["readings"][0]["tags"] = {"district": "kamo", "area": "north"}
    line = lineproto.batch_to_lines(wire.decode_batch(TOPIC, _raw(d), now_ms=NOW))[0]
    assert line.startswith("forest,area=north,device=forest-01,district=kamo,gateway=gw-1 ok=true,")


@pytest.mark.parametrize(
    "tags",
    [{"gateway": "gw-2"}, {"device": "x"}, {"ok": "x"}, {"district": "Not An Id"}, {f"t{i}": "a" for i in range(5)}],
)
def test_bad_tags_are_schema_errors(tags):
    d = _batch()
    d["readings"][0]["tags"] = tags
    with pytest.raises(wire.ContractError) as exc:
        wire.decode_batch(TOPIC, _raw(d), now_ms=NOW)
    assert exc.value.reason == "schema"


def test_string_fields_are_escaped():
    d = _batch()
    d["readings"][0]["values"] = {"note": 'a "quoted" \\ value'}
    d["readings"][0]["units"] = {}
    line = lineproto.batch_to_lines(wire.decode_batch(TOPIC, _raw(d), now_ms=NOW))[0]
    assert 'note="a \\"quoted\\" \\\\ value"' in line


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        (b"{not json", "bad_json"),
        (b"\xff\xfe", "bad_json"),
        (b"[1, 2]", "schema"),
        (_raw(_batch(v=2)), "unsupported_version"),
        (_raw(_batch(gateway_id="gw-2")), "gateway_mismatch"),
        (_raw(_batch(readings=[])), "schema"),
        (_raw(_batch(extra_key=1)), "schema"),
        (_raw(_batch()).replace(b"31.4", b"NaN"), "bad_json"),
        (_raw(_batch()).replace(b"31.4", b"1e999"), "schema"),
        (_raw(_batch()).replace(b'"forest-01"', b'"Forest 01"'), "schema"),
        (_raw(_batch()).replace(str(NOW - 1000).encode(), str(NOW + 3_600_000).encode()), "timestamp_out_of_range"),
        (_raw(_batch()).replace(str(NOW - 1000).encode(), b"1000"), "timestamp_out_of_range"),
        (b"{" + b" " * wire.MAX_PAYLOAD_BYTES + b"}", "oversize"),
    ],
)
def test_invalid_payloads_have_stable_reasons(payload, reason):
    with pytest.raises(wire.ContractError) as ei:
        wire.decode_batch(TOPIC, payload, now_ms=NOW)
    assert ei.value.reason == reason


def test_topic_parsing():
    assert wire.gateway_from_topic("cityos/v1/gw-1/telemetry") == "gw-1"
    assert wire.gateway_from_topic("cityos/v1/GW 1/telemetry") is None
    assert wire.gateway_from_topic("other/v1/gw-1/telemetry") is None
    with pytest.raises(wire.ContractError, match="bad_topic"):
        wire.decode_batch("cityos/v1/gw-1/other", _raw(_batch()), now_ms=NOW)


def test_published_json_schema_is_current_and_validates_real_payloads():
    for name, schema in wire.json_schemas().items():
        committed = json.loads((ROOT / "docs" / "schema" / name).read_text())
        assert committed == schema, f"docs/schema/{name} is stale: run `cityos schema`"
    schema = wire.json_schemas()["telemetry-batch.v1.schema.json"]
    jsonschema.validate(_batch(), schema)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(_batch(gateway_id="Not Valid"), schema)


def _imports(pkg: str) -> set[str]:
    found = set()
    for f in (ROOT / pkg).rglob("*.py"):
        for node in ast.walk(ast.parse(f.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module:
                found.add(node.module.split(".")[0])
            elif isinstance(node, ast.Import):
                found.update(a.name.split(".")[0] for a in node.names)
    return found


def test_only_the_wire_contract_crosses_between_edge_and_cloud():
    assert not _imports("edge") & {"ingest", "cityos_api", "firmware_sim", "httpx", "fastapi"}
    assert not _imports("ingest") & {"edge", "firmware_sim"}
    # the simulator is the device: it shares nothing with the gateway code
    assert not _imports("firmware_sim") & {"edge", "ingest"}


def test_spliced_batch_is_the_batch_of_its_readings():
    """The gateway's fast path (stored bodies spliced, late ones marked) decodes to exactly the TelemetryBatch of
    those readings: the wire module owns these bytes and the contract checks them."""
    readings = [
        wire.Reading(device_id="forest-01-01", kind="forest_station", ts=NOW - 5000,
                     values={"rain_mm": 0.5, "ok": True, "note": 'a "quoted" \\ value'}, units={"rain_mm": "mm"}),
        wire.Reading(device_id="truck-01", kind="truck_collection", ts=NOW - 4000, values={"kg": 120.0},
                     tags={"district": "chuo"}),
        wire.Reading(device_id="hh-0001", kind="smart_meter", ts=NOW - 3000, values={"energy_kwh": 1234.5}),
    ]
    late = [False, True, False]
    payload = wire.splice_batch("gw-forest-01", "boot-0001", 7, NOW, [wire.reading_body(r) for r in readings],
                                late)
    got = wire.decode_batch(wire.telemetry_topic("gw-forest-01"), payload, now_ms=NOW)
    want = wire.TelemetryBatch(gateway_id="gw-forest-01", boot_id="boot-0001", seq=7, sent_at=NOW, readings=[
        r.model_copy(update={"backfill": lt}) for r, lt in zip(readings, late, strict=True)])
    assert got == want
    assert json.loads(payload) == json.loads(wire.encode_batch(want)) | {
        "readings": [json.loads(wire.reading_body(r)) | ({"backfill": True} if lt else {})
                     for r, lt in zip(readings, late, strict=True)]}
