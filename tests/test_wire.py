"""The wire contract: what a gateway may send, what the ingest turns into InfluxDB points."""

from __future__ import annotations

import ast
import json
import re
import time
from decimal import Decimal
from pathlib import Path

import jsonschema
import msgspec
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
        f'forest,device=forest-01,gateway=gw-1 soil_moisture_pct=31.4,rain_tips=5.0,ok=true,state="joined",backfill=false {NOW - 1000}'
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
    assert line.startswith("forest,area=north,device=forest-01,district=kamo,gateway=gw-1 soil_moisture_pct=31.4,")


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
        msgspec.structs.replace(r, backfill=lt) for r, lt in zip(readings, late, strict=True)])
    assert got == want
    assert json.loads(payload) == json.loads(wire.encode_batch(want)) | {
        "readings": [json.loads(wire.reading_body(r)) | ({"backfill": True} if lt else {})
                     for r, lt in zip(readings, late, strict=True)]}


# --- the checks the contract writes out itself (msgspec's own are its types and limits) -------------------------


def _reading_with(**over) -> bytes:
    d = _batch()
    d["readings"][0].update(over)
    return _raw(d)


@pytest.mark.parametrize(
    ("payload", "reason", "detail"),
    [
        (_raw(_batch(v=True)), "unsupported_version", "True"),
        (_raw(_batch(v=1.0)), "unsupported_version", "1.0"),
        (_raw(_batch(v=0)), "unsupported_version", "0"),
        (_raw({k: v for k, v in _batch().items() if k != "v"}), "unsupported_version", "None"),
        (_reading_with(ts=float(NOW)), "schema", "Expected `int`, got `float` - at `$.readings[0].ts`"),
        (_reading_with(ts=True), "schema", "Expected `int`, got `bool` - at `$.readings[0].ts`"),
        (_raw(_batch(seq=True)), "schema", "Expected `int`, got `bool` - at `$.seq`"),
        (_raw(_batch()).replace(b"31.4", b"1e400"), "schema",
         "Expected a finite `float` - at `$.readings[0].values.soil_moisture_pct`"),
        (_raw(_batch()).replace(b"31.4", b"-1e999"), "schema",
         "Expected a finite `float` - at `$.readings[0].values.soil_moisture_pct`"),
        (_reading_with(values={"note": "a\udc00b"}, units={}), "schema",
         "string is not valid Unicode (a lone surrogate) - at `$.readings[0].values.note`"),
        (_reading_with(units={"soil_moisture_pct": "\ud800"}), "schema",
         "string is not valid Unicode (a lone surrogate) - at `$.readings[0].units.soil_moisture_pct`"),
        (_reading_with(units={"zz": "C"}), "schema",
         "units given for fields without values: ['zz'] - at `$.readings[0]`"),
        (_reading_with(values={"backfill": 1.0}, units={}), "schema",
         "value name 'backfill' is reserved (the late-delivery mark) - at `$.readings[0]`"),
        (_reading_with(tags={"ok": "x", "device": "y"}), "schema",
         "tag keys clash with device/gateway or a value name: ['device', 'ok'] - at `$.readings[0]`"),
        (_reading_with(device_id="forest-01\n"), "schema",
         'device_id "forest-01\\n" does not match ^[a-z0-9][a-z0-9_-]{0,62}$ - at `$.readings[0]`'),
        (_reading_with(kind="Forest"), "schema", 'kind "Forest" does not match ^[a-z][a-z0-9_]{0,31}$'),
        (_reading_with(values={"ok\n": True}, units={}), "schema", 'value name "ok\\n" does not match'),
        (_reading_with(tags={"District": "a"}), "schema", 'tag key "District" does not match'),
        (_reading_with(tags={"district": "kamo\n"}), "schema", 'tag value "kamo\\n" does not match'),
        (_raw(_batch(gateway_id="gw-1\n")), "schema", 'gateway_id "gw-1\\n" does not match'),
        (_reading_with(backfill=1), "schema", "Expected `bool`, got `int` - at `$.readings[0].backfill`"),
        (_reading_with(values={"x": None}, units={}), "schema", "got `null` - at `$.readings[0].values.x`"),
        (_reading_with(values={"x": "y" * 257}, units={}), "schema",
         "Expected `str` of length <= 256 - at `$.readings[0].values.x`"),
        (_reading_with(units={"soil_moisture_pct": "x" * 17}), "schema",
         "Expected `str` of length <= 16 - at `$.readings[0].units.soil_moisture_pct`"),
        (_reading_with(values={f"v{i}": 1.0 for i in range(65)}, units={}), "schema",
         "Expected `object` of length <= 64 - at `$.readings[0].values`"),
        (_raw(_batch(readings=_batch()["readings"] * 501)), "schema", "Expected `array` of length <= 500"),
    ],
)
def test_each_check_has_its_reason_and_names_the_field(payload, reason, detail):
    with pytest.raises(wire.ContractError) as ei:
        wire.decode_batch(TOPIC, payload, now_ms=NOW)
    assert ei.value.reason == reason
    assert detail in ei.value.detail if reason == "schema" else ei.value.detail == detail


def _status(**over) -> bytes:
    d = {"v": 1, "gateway_id": "gw-1", "state": "online", "boot_id": "boot-0001", "ts": NOW}
    return _raw(d | over)


@pytest.mark.parametrize(
    ("payload", "detail"),
    [
        (_status(backlog_depth=-1), "Expected `int` >= 0 - at `$.backlog_depth`"),
        (_status(backlog_depth=3.0), "got `float` - at `$.backlog_depth`"),
        (_status(backlog_age_s=-0.5), "Expected `float` >= 0.0 - at `$.backlog_age_s`"),
        (_status(backlog_age_s=1.5).replace(b"1.5", b"1e400"), "Expected a finite `float` - at `$.backlog_age_s`"),
        (_status(counters={"sent": True}), "Expected `float`, got `bool` - at `$.counters.sent`"),
        (_status(counters={"Sent": 1.0}), 'counter name "Sent" does not match'),
        (_status(devices={f"st-{i}": {"ok": 1.0} for i in range(65)}), "Expected `object` of length <= 64"),
        (_status(devices={"st-1": {"ok": 1.0}}).replace(b"1.0", b"1e400"),
         'Expected a finite `float` - at `$.devices["st-1"].ok`'),
        (_status(devices={"St 1": {"ok": 1.0}}), 'device "St 1" does not match'),
        (_status(devices={"st-1": {"OK": 1.0}}), 'device health name "OK" does not match'),
        (_status(state="asleep"), "Invalid enum value 'asleep' - at `$.state`"),
        (_status(agent_version="\udc00"), "lone surrogate) - at `$.agent_version`"),
    ],
)
def test_status_checks_name_the_field(payload, detail):
    with pytest.raises(wire.ContractError) as ei:
        wire.decode_status("cityos/v1/gw-1/status", payload, now_ms=NOW)
    assert ei.value.reason == "schema" and detail in ei.value.detail, ei.value.detail


def test_details_stay_short():
    huge_key = "k" * 100_000
    for payload in (_raw(_batch(**{huge_key: 1})), _reading_with(values={huge_key: 1.0}, units={}),
                    _reading_with(units={f"u{i}": "x" for i in range(64)}),
                    _reading_with(values={"x": "\udc00"}, units={}, tags={huge_key: "a"})):
        with pytest.raises(wire.ContractError) as ei:
            wire.decode_batch(TOPIC, payload, now_ms=NOW)
        assert ei.value.reason == "schema" and len(ei.value.detail) <= 300


# --- what a program builds is checked where it is encoded --------------------------------------------------------


def _reading(**over) -> wire.Reading:
    return wire.Reading(**({"device_id": "forest-01", "kind": "forest_station", "ts": NOW, "values": {"x": 1.5}}
                           | over))


@pytest.mark.parametrize(
    ("over", "detail"),
    [
        ({"values": {"x": float("nan")}}, "Expected a finite `float` - at `$.values.x`"),
        ({"values": {"x": float("-inf")}}, "Expected a finite `float` - at `$.values.x`"),
        ({"values": {"x": Decimal("NaN")}}, "Expected a finite `float` - at `$.values.x`"),
        ({"values": {"x": None}}, "Expected `bool | float | str`, got `null` - at `$.values.x`"),
        ({"values": {"x": [1.0]}}, "Expected `bool | float | str`, got `array` - at `$.values.x`"),
        ({"values": {"x": "\udc00"}}, "string is not valid Unicode (a lone surrogate) - at `$.values.x`"),
        ({"values": {}}, "Expected `object` of length >= 1 - at `$.values`"),
        ({"ts": -1}, "Expected `int` >= 0 - at `$.ts`"),
        ({"ts": 1.0}, "Expected `int`, got `float` - at `$.ts`"),
        ({"units": {"x": "much too long a unit"}}, "Expected `str` of length <= 16 - at `$.units.x`"),
    ],
)
def test_a_reading_built_in_python_is_checked_when_stored(over, detail):
    r = _reading(**over)  # a Struct checks nothing when it is built ...
    for check in (wire.reading_body, wire.checked):  # ... the outbox's body and checked() do, alike
        with pytest.raises(wire.ContractError) as ei:
            check(r)
        assert ei.value.reason == "schema" and detail in ei.value.detail, ei.value.detail


@pytest.mark.parametrize(
    ("over", "message"),
    [
        ({"device_id": "Forest 01"}, 'device_id "Forest 01" does not match'),
        ({"values": {5: 1.0}}, "value name 5 does not match"),
        ({"values": {"backfill": True}}, "value name 'backfill' is reserved"),
        ({"units": {"y": "C"}}, "units given for fields without values: ['y']"),
        ({"tags": {"gateway": "gw-2"}}, "tag keys clash with device/gateway or a value name: ['gateway']"),
    ],
)
def test_names_and_cross_field_checks_refuse_at_construction(over, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        _reading(**over)


def test_checked_reading_body_and_encoders():
    r = _reading(values={"n": 5, "ok": True, "s": "x"}, units={"n": "count"}, backfill=True)
    c = wire.checked(r)
    assert c.values == {"n": 5.0, "ok": True, "s": "x"} and type(c.values["n"]) is float  # as the ingest reads it
    assert wire.checked(_reading(values={"d": Decimal("2.5")})).values == {"d": 2.5}
    body = wire.reading_body(r)
    assert json.loads(body) == {"device_id": "forest-01", "kind": "forest_station", "ts": NOW,
                                "values": {"n": 5.0, "ok": True, "s": "x"}, "units": {"n": "count"}}
    assert wire.reading_dict(r) == {"device_id": "forest-01", "kind": "forest_station", "ts": NOW,
                                    "values": {"n": 5.0, "ok": True, "s": "x"}, "units": {"n": "count"},
                                    "tags": {}, "backfill": True}
    batch = wire.TelemetryBatch(gateway_id="gw-1", boot_id="boot-0001", seq=1, sent_at=NOW, readings=[r])
    payload = wire.encode_batch(batch)
    assert payload.startswith(b'{"v":1,"gateway_id":"gw-1",')
    assert wire.decode_batch(TOPIC, payload, now_ms=NOW) == wire.checked(batch)
    bad = wire.TelemetryBatch(gateway_id="gw-1", boot_id="boot-0001", seq=1, sent_at=NOW,
                              readings=[_reading(values={"x": float("nan")})])
    with pytest.raises(wire.ContractError, match=re.escape("finite `float` - at `$.readings[0].values.x`")):
        wire.encode_batch(bad)  # a Struct inside a Struct is checked too
    st = wire.GatewayStatus(gateway_id="gw-1", state="online", boot_id="boot-0001", ts=NOW,
                            devices={f"st-{i}": {"ok": 1.0} for i in range(65)})
    with pytest.raises(wire.ContractError, match="length <= 64"):
        wire.encode_status(st)
    st = wire.GatewayStatus(gateway_id="gw-1", state="online", boot_id="boot-0001", ts=NOW, backlog_depth=3)
    assert json.loads(wire.encode_status(st)) == {"v": 1, "gateway_id": "gw-1", "state": "online",
                                                  "boot_id": "boot-0001", "ts": NOW, "backlog_depth": 3}
    rc = wire.Receipt(gateway_id="gw-1", boot_id="boot-0001", seq=1, points=-1, stored_at=NOW)
    with pytest.raises(wire.ContractError, match=re.escape("Expected `int` >= 0 - at `$.points`")):
        wire.encode_receipt(rc)
    rc = wire.Receipt(gateway_id="gw-1", boot_id="boot-0001", seq=1, points=3, stored_at=NOW)
    assert wire.decode_receipt(wire.encode_receipt(rc)) == rc
    with pytest.raises(wire.ContractError) as ei:
        wire.decode_receipt(b'{"v":1,"gateway_id":"gw-1"}')
    assert ei.value.reason == "schema"


def test_the_memory_of_good_names_is_bounded():
    names = wire._Names(wire.FIELD_PATTERN)
    assert names.bad(["a", "b"]) is wire._GOOD and names.bad(["a", "B", "c"]) == "B"
    assert "B" not in names._ok  # a refused name is never remembered
    for i in range(3 * names._BOUND):
        assert names.bad([f"n{i}"]) is wire._GOOD
    assert 0 < len(names._ok) <= names._BOUND


@pytest.mark.parametrize("encoding", ["utf-16", "utf-32", "utf-8-sig"])
def test_a_payload_that_is_not_plain_utf8_is_bad_json(encoding: str) -> None:
    """json.loads guesses UTF-16 and UTF-32 from bytes; the contract is UTF-8, without a BOM."""
    now = 1_700_000_000_000
    body = json.dumps({"v": 1, "gateway_id": "gw-1", "boot_id": "boot-0001", "seq": 1, "sent_at": now,
                       "readings": [{"device_id": "d1", "kind": "forest_station", "ts": now, "values": {"x": 1.0}}]})
    with pytest.raises(wire.ContractError) as e:
        wire.decode_batch(wire.telemetry_topic("gw-1"), body.encode(encoding), now_ms=now)
    assert e.value.reason == "bad_json"
