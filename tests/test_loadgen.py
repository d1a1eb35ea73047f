"""The city-scale load generator speaks the real contract, and the ingest stores every reading it sends."""

from __future__ import annotations

from helpers import influx_query
from ingest_helpers import ingest_config, running_ingest, wait_for

from citylab.stack import mqtt_settings
from cityos import wire
from cityos.credentials import MqttLogin
from firmware_sim.loadgen import CityLoad, LoadProfile, build_gateways, validate_sample


def test_profile_builds_the_city_and_every_family_passes_the_contract():
    p = LoadProfile()
    gws = build_gateways(p)
    fam = {f: sum(g.family == f for g in gws) for f in ("meter", "forest", "truck")}
    assert fam == {"meter": 5000, "forest": 50, "truck": 30}
    assert sum(len(g.devices) for g in gws if g.family == "forest") == 200
    validate_sample(p)  # raises ContractError if a family's message is invalid


def test_every_generated_reading_lands_in_influxdb_exactly(stack, influx_db, tmp_path):
    info = stack.info()
    cfg = ingest_config(info, tmp_path, influx_db)
    profile = LoadProfile(meters=60, stations=12, trucks=4, speed=20, connections=2, prefix="lgt")
    with running_ingest(cfg):
        load = CityLoad(profile, MqttLogin.model_validate(mqtt_settings(info, "dev.loadgen")))
        load.connect()
        try:
            res = load.run(6.0)
        finally:
            load.close()
        assert res.acked_messages == res.messages > 100

        def counts() -> dict[str, int]:
            got = {}
            for m in res.by_measurement:
                series = influx_query(info, influx_db, f'SELECT count(*) FROM "{m}"')
                got[m] = max(series[0]["values"][0][1:]) if series else 0
            return got

        wait_for(lambda: counts() == res.by_measurement, 60, f"InfluxDB to hold {res.by_measurement}")
    kinds = ("smart_meter", "forest_station", "truck_collection", "gateway_health", "source_health")
    assert set(res.by_measurement) >= {wire.measurement_for(k) for k in kinds}
