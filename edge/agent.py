"""The gateway agent: sources → durable outbox → uplink, each source in its own supervised thread."""

from __future__ import annotations

import logging
import signal
import threading
import time
import uuid
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

from cityos.config import read_toml
from cityos.wire import Reading
from edge import clock
from edge.config import GatewayConfig, config_hash, parse_config
from edge.health import HealthSampler
from edge.machine import release_free_memory
from edge.outbox import Outbox
from edge.sources.base import Source, plugin
from edge.uplink import Uplink

log = logging.getLogger("cityos.edge")

_FIRST_TRIM_S = 5.0
_TRIM_INTERVAL_S = 60.0


def agent_version() -> str:
    try:
        return version("cityos-telemetry")
    except PackageNotFoundError:
        return "0+unknown"


def _plugin(type_name: str) -> Any:
    found = plugin(type_name)
    if found is None:  # parse_config already rejected unknown types
        raise ValueError(f"unknown source type {type_name!r}")
    return found


class _Context:
    """The SourceContext a source runs with: emit commits to the outbox with the source's state."""

    def __init__(self, name: str, outbox: Outbox) -> None:
        self.name = name
        self.outbox = outbox
        self.state: dict[str, Any] = outbox.load_state(name)

    def emit(self, reading: Reading, state: dict[str, Any] | None = None, part: str | None = None) -> None:
        self.outbox.append(reading, source=self.name, state=state, part=part)
        if state is None:
            return
        if part is None:
            self.state = {**state, "parts": self.state["parts"]} if "parts" in self.state else state
        else:
            self.state.setdefault("parts", {})[part] = state


class Agent:
    def __init__(self, cfg: GatewayConfig, *, cfg_hash: str = "") -> None:
        self.cfg = cfg
        self.cfg_hash = cfg_hash
        clock.use_scaled(cfg.clock)
        self.boot_id = uuid.uuid4().hex
        self.outbox = Outbox(
            cfg.outbox.path,
            max_readings=cfg.outbox.max_readings,
            drop_policy=cfg.outbox.drop_policy,
            synchronous=cfg.outbox.synchronous,
        )
        self.sources: list[Source] = [_plugin(s.type).factory(s) for s in cfg.sources]
        self.source_restarts: dict[str, int] = {s.name: 0 for s in self.sources}
        self.uplink = Uplink(
            cfg.gateway.id,
            self.outbox,
            cfg.mqtt,
            boot_id=self.boot_id,
            backfill_after_s=cfg.outbox.backfill_after_s,
            status_fn=self.status_fields,
        )
        self.stop = threading.Event()
        self._threads: list[threading.Thread] = []

    def gateway_counters(self) -> dict[str, float]:
        counters: dict[str, float] = {f"uplink_{k}": v for k, v in self.uplink.stats.as_dict().items()}
        counters.update({f"outbox_{k}": float(v) for k, v in self.outbox.counters().items()})
        synced = clock.kernel_synced()
        counters["gateway_clock_synced"] = -1.0 if synced is None else float(synced)
        counters["gateway_clock_plausible"] = float(clock.plausible())
        counters["source_restarts"] = float(sum(self.source_restarts.values()))
        return counters

    def status_fields(self) -> dict[str, Any]:
        counters = self.gateway_counters()
        for src in self.sources:
            for k, v in src.health().items():
                counters[f"{src.name}_{k}".replace("-", "_").lower()[:48]] = float(v)
        return {
            "agent_version": agent_version(),
            "config_hash": self.cfg_hash,
            "backlog_depth": self.outbox.depth,
            "backlog_age_s": round(self.outbox.oldest_age_s(), 3),
            "counters": counters,
        }

    def _supervise(self, src: Source) -> None:
        """A source bug must not take the gateway down: log it, count it, restart the source after a pause."""
        ctx = _Context(src.name, self.outbox)
        while not self.stop.is_set():
            try:
                src.run(ctx, self.stop)
            except Exception:
                self.source_restarts[src.name] += 1
                log.exception("source %s crashed; restarting in 5 s", src.name)
                self.stop.wait(5)

    def _health_loop(self) -> None:
        """Health readings into the outbox, durable like data: an outage leaves no gap in them either."""
        sampler = HealthSampler(self.cfg.outbox.path.parent)
        families = {s.name: s.type for s in self.cfg.sources}
        while not self.stop.wait(self.cfg.health.interval_s):
            counters = self.gateway_counters()
            counters["backlog_depth"] = float(self.outbox.depth)
            counters["backlog_age_s"] = round(self.outbox.oldest_age_s(), 3)
            try:
                readings = sampler.readings(
                    counters, [(s.name, families.get(s.name, "source"), s.health) for s in self.sources]
                )
                for r in readings:
                    self.outbox.append(r)
            except Exception:
                log.exception("health sample failed")

    def start(self) -> None:
        if self.cfg.health.enabled:
            t = threading.Thread(target=self._health_loop, name="health", daemon=True)
            t.start()
            self._threads.append(t)
        for src in self.sources:
            t = threading.Thread(target=self._supervise, args=(src,), name=f"source-{src.name}", daemon=True)
            t.start()
            self._threads.append(t)
        t = threading.Thread(target=self.uplink.run, args=(self.stop,), name="uplink", daemon=True)
        t.start()
        self._threads.append(t)

    def shutdown(self, timeout: float = 10) -> None:
        self.stop.set()
        deadline = time.monotonic() + timeout
        for t in self._threads:
            t.join(max(0.1, deadline - time.monotonic()))
        self.outbox.close()


def run(config_path: str | Path) -> int:
    raw = read_toml(config_path)
    cfg = parse_config(raw, str(config_path))
    logging.basicConfig(
        level=cfg.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", force=True
    )
    hashed = {k: v for k, v in raw.items() if k != "mqtt"} | {
        "mqtt": {k: v for k, v in raw.get("mqtt", {}).items() if k != "password"}
    }
    agent = Agent(cfg, cfg_hash=config_hash(hashed))

    def _term(signum: int, _frame: Any) -> None:
        log.info("signal %d: stopping", signum)
        agent.stop.set()

    signal.signal(signal.SIGTERM, _term)
    signal.signal(signal.SIGINT, _term)
    log.info(
        "gateway %s starting: %d source(s), outbox %s holds %d readings",
        cfg.gateway.id, len(agent.sources), cfg.outbox.path, agent.outbox.depth,
    )
    agent.start()
    # Give back what start-up left free (config and schema building, opening ports, the first connect), then
    # keep doing so: a backlog drain or an outage grows the heap in bursts. Costs ~1 ms a minute.
    next_trim = time.monotonic() + _FIRST_TRIM_S
    while not agent.stop.wait(1):
        if time.monotonic() >= next_trim:
            release_free_memory()
            next_trim = time.monotonic() + _TRIM_INTERVAL_S
    agent.shutdown()
    log.info("gateway %s stopped", cfg.gateway.id)
    return 0
