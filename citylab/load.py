"""``cityos sim load``: the city-scale load generator (:mod:`firmware_sim.loadgen`) against a private stack."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from citylab.stack import load_info, mqtt_settings
from cityos.credentials import MqttLogin
from firmware_sim.loadgen import CityLoad, LoadProfile, validate_sample


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="cityos sim load", description=__doc__.split("\n")[0])
    for name, f in LoadProfile.model_fields.items():
        ap.add_argument(f"--{name.replace('_', '-')}", type=type(f.default), default=f.default)
    ap.add_argument("--duration", type=float, default=60.0, help="real seconds to publish for")
    ap.add_argument("--run-dir", type=Path, default=Path("run/stack"), help="the private stack's run directory")
    ap.add_argument("--json", action="store_true", help="print the result as JSON")
    args = ap.parse_args(argv)
    profile = LoadProfile(**{k: getattr(args, k) for k in LoadProfile.model_fields})
    validate_sample(profile)
    info = load_info(args.run_dir)
    load = CityLoad(profile, MqttLogin.model_validate(mqtt_settings(info, "dev.loadgen")))
    load.connect()
    try:
        res = load.run(args.duration)
    finally:
        load.close()
    if args.json:
        print(json.dumps(res.as_dict()))
    else:
        print(
            f"{res.gateways} virtual gateways, {res.duration_s:.1f} s: {res.messages} messages "
            f"({res.acked_messages} acknowledged), {res.readings} readings "
            f"({res.readings / res.duration_s:.1f}/s), max scheduling lag {res.max_lag_s:.3f} s"
        )
        for m, n in sorted(res.by_measurement.items()):
            print(f"  {m:20s} {n}")
    return 0 if res.acked_messages >= res.messages else 1

