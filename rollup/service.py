"""``cityos rollup``: a pass every ``interval_s`` (or one, ``--once``): energy (frozen half hours and days), then
waste (district days, the last ``recompute_days`` recomputed), then the trucks' cargo per hour and JST day (the
same days recomputed), then the forest stations (10 minutes, hours, days and alert readings; late readings of the
last ``recompute_days`` rolled up again).

**InfluxDB failing** (unreachable, a query refused, a write not taken): the pass stops at once (every batch before
it is stored, with its progress point), ``cityos rollup`` prints one line naming InfluxDB's answer to stderr and
exits 1; nothing is retried in the process. Under systemd (``deploy/cloud/cityos-rollup.service``) the unit
restarts it a minute later, and the next pass resumes from the target's progress points: a restart is always safe,
so the retry policy is systemd's. A config error is exit 2; SIGTERM/SIGINT finish the batch being written and exit
0.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
import time
from collections.abc import Callable, Sequence

from cityos.influx import InfluxClient, InfluxError
from rollup.bus import bus_pass
from rollup.config import RollupConfig, load_config
from rollup.energy import energy_pass
from rollup.forest import forest_pass
from rollup.report import Report
from rollup.store import Store
from rollup.truck import truck_pass
from rollup.waste import waste_pass

__all__ = ["main", "open_client", "run_once"]

log = logging.getLogger("rollup")


def open_client(config: RollupConfig) -> InfluxClient:
    """The kernel's client, logged in as the rollup user, writing to the target."""
    return InfluxClient.from_settings(config.influx.model_copy(update={"db": config.target}), gzip=True)


def _never() -> bool:
    return False


def run_once(config: RollupConfig, now_ms: int | None = None, *, client: InfluxClient | None = None,
             stop: Callable[[], bool] = _never, after_batch: Callable[[str, int], None] | None = None) -> Report:
    """One pass as of ``now_ms`` (default: now): energy, waste, trucks' cargo, buses, forest. Raises
    :class:`~cityos.influx.InfluxError` when InfluxDB fails (what was written before stays: the next pass resumes
    after it). ``client`` defaults to :func:`open_client` (closed after); ``stop`` is asked between batches;
    ``after_batch(job, until_ms)`` is called after each batch is stored (tests inject a crash there)."""
    now = int(time.time() * 1000) if now_ms is None else int(now_ms)
    own = client is None
    c = open_client(config) if client is None else client
    hook = after_batch or (lambda _job, _until: None)
    t0 = time.monotonic()
    try:
        store = Store(c, config.influx.db, config.target)
        rep = Report()
        rep.energy = energy_pass(store, round(config.rollup.energy_settle_h * 3_600_000), now, stop, hook)
        if not stop():
            rep.waste = waste_pass(store, config.rollup.recompute_days, now, stop, hook)
        if not stop():  # the trucks' cargo and the buses (the NGSI-LD Vehicle's aggregates)
            rep.truck = truck_pass(store, config.rollup.recompute_days, now, stop, hook)
        if not stop():
            rep.bus = bus_pass(store, config.rollup.recompute_days, now, stop, hook)
        if not stop():
            rep.forest = forest_pass(store, config.rollup.recompute_days, now, stop, hook)
        rep.seconds = time.monotonic() - t0
        return rep
    finally:
        if own:
            c.close()


def run(config: RollupConfig, stop: threading.Event, once: bool = False) -> int:
    """Passes until ``stop`` (or one): 0, or 1 when InfluxDB failed (one line on stderr)."""
    with open_client(config) as client:
        while True:
            t0 = time.monotonic()
            try:
                rep = run_once(config, client=client, stop=stop.is_set)
            except InfluxError as exc:
                print(f"cityos rollup: {config.influx.db} -> {config.target}: {exc}", file=sys.stderr)
                return 1
            log.info("pass: %s", rep.summary())
            if once or stop.is_set():
                return 0
            stop.wait(max(0.0, config.rollup.interval_s - (time.monotonic() - t0)))
            if stop.is_set():
                return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="cityos rollup", description=__doc__.split("\n")[0])
    parser.add_argument("--config", "-c", required=True, help="TOML config file")
    parser.add_argument("--once", action="store_true", help="one pass, then exit")
    parser.add_argument("--log-level", default="INFO")
    args = parser.parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        stream=sys.stderr)
    logging.getLogger("httpx").setLevel(logging.WARNING)
    config = load_config(args.config)  # ConfigError: `cityos` prints it and exits 2
    stop = threading.Event()

    def _on_signal(signum: int, frame: object) -> None:
        log.info("signal %s: stopping after the batch being written", signal.Signals(signum).name)
        stop.set()

    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGINT, _on_signal)
    return run(config, stop, args.once)


if __name__ == "__main__":
    sys.exit(main())
