"""The gateway agent: sources → durable outbox → uplink, each source in its own supervised thread.

Fail loud: a thread of the agent that dies (the uplink, the health sampler, a source's supervisor) ends the
process with status 1 and one log line naming the thread, the cause and the settings to look at, so systemd
restarts it and the fleet view sees the gateway go offline, instead of a process that looks alive and sends
nothing. A source's own crash is not such a death: its supervisor counts it and restarts it after a pause. A
config that cannot work (a bad outbox path, a TLS file the uplink cannot load) is a ConfigError before any
thread starts (the CLI prints it and exits 2); no message repeats a secret of the config.

The local status file
---------------------
Beside the outbox the agent keeps ``status.json`` (:func:`status_path`): what its MQTT status says (counters,
backlog, ``devices``) plus what only this machine can use: its pid and the process's start time (so that a pid
reused by another process is not taken for the agent), ``time.monotonic()`` at writing (system-wide, immune to
NTP steps: the reader tells its age without trusting the wall clock), the interval and, once it stops, the state
``offline`` and the one line of a dead thread. `cityos gateway check --live` reads it, with no broker and no
credential. Written by the main loop every ``mqtt.status_interval_s``, at once when ``outbox_disk_full`` changes,
within a second of a SIGUSR1 (the check asks for a fresh one while it waits for the devices), and at the stop; not
more often, for the SD card's sake. Written atomically (a temporary file renamed over it); on a full filesystem,
where a new file cannot be created, rewritten in place: the JSON is padded with spaces to whole 4 KiB blocks, so
the file keeps its size and needs no new block (a reader may then see a torn write, and reads again).
"""

from __future__ import annotations

import contextlib
import errno
import functools
import json
import logging
import os
import signal
import threading
import time
import uuid
from collections.abc import Callable
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

from pydantic import BaseModel, SecretStr

from cityos.config import ConfigError, read_toml
from cityos.wire import Reading
from edge import clock
from edge.config import GatewayConfig, config_hash, parse_config
from edge.health import HealthSampler, field_name
from edge.machine import release_free_memory
from edge.outbox import Outbox, OutboxError
from edge.sources.base import Source, plugin
from edge.uplink import Uplink

log = logging.getLogger("cityos.edge")

_FIRST_TRIM_S = 5.0
#: Free heap is given back every 10 s (a trim costs microseconds), after a full collection every minute.
_TRIM_INTERVAL_S = 10.0
_COLLECT_EVERY = 6
_SOURCE_RESTART_S = 5.0
#: The exit status of an agent one of whose threads died (a config error is 2, from the CLI).
EXIT_THREAD_DIED = 1
#: The local status file, beside the outbox (see the module docstring).
STATUS_FILE = "status.json"
STATUS_VERSION = 1
_STATUS_BLOCK = 4096
_STATUS_WARN_S = 60.0


def status_path(cfg: GatewayConfig) -> Path:
    """Where the agent of ``cfg`` keeps its local status file."""
    return cfg.outbox.path.parent / STATUS_FILE


def process_start(pid: int) -> int | None:
    """When process ``pid`` started (clock ticks since boot, /proc/<pid>/stat field 22); None if it is gone or
    this is not Linux. With the pid it names one process for the system's whole uptime."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat.rpartition(")")[2].split()  # the name (field 2) may hold spaces and parentheses
    try:
        return int(fields[19])  # field 22 counted from the state (field 3)
    except (IndexError, ValueError):
        return None


def kernel_boot_id() -> str:
    """This boot's id (a monotonic time means nothing across a reboot); "" where the kernel does not say."""
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return ""


def write_status_file(path: Path, status: dict[str, Any]) -> None:
    """Write ``status`` as JSON padded to whole blocks: atomically, or in place when the disk is full."""
    data = json.dumps(status, separators=(",", ":")).encode()
    data += b" " * (-(len(data) + 1) % _STATUS_BLOCK) + b"\n"
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o640)
        try:
            os.write(fd, data)
        finally:
            os.close(fd)
        os.replace(tmp, path)
        return
    except OSError as exc:
        with contextlib.suppress(OSError):
            tmp.unlink()
        if exc.errno not in (errno.ENOSPC, errno.EDQUOT) or not path.exists():
            raise
    # A full filesystem: overwrite the blocks the file already has (its size is whole blocks; it stays so).
    fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
    try:
        if len(data) > os.fstat(fd).st_size:
            raise OSError(errno.ENOSPC, "no room to grow the status file on a full filesystem")
        os.pwrite(fd, data, 0)
        os.ftruncate(fd, len(data))
    finally:
        os.close(fd)


@functools.cache
def agent_version() -> str:
    """The installed agent's version (looked up once: the code running is the one loaded at start)."""
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
        try:
            self.outbox = Outbox(
                cfg.outbox.path,
                max_readings=cfg.outbox.max_readings,
                drop_policy=cfg.outbox.drop_policy,
                synchronous=cfg.outbox.synchronous,
                # a setting the config may grow; the outbox's default (1/256 of its filesystem) otherwise
                reserve_bytes=cfg.outbox.reserve_bytes,
            )
        except OutboxError as exc:
            raise ConfigError(f"outbox.path: {exc}") from None
        try:
            self.sources: list[Source] = [_plugin(s.type).factory(s) for s in cfg.sources]
            self.source_restarts: dict[str, int] = {s.name: 0 for s in self.sources}
            # raises ConfigError naming the setting for a TLS or password file it cannot use: left as it is
            self.uplink = Uplink(
                cfg.gateway.id,
                self.outbox,
                cfg.mqtt,
                boot_id=self.boot_id,
                backfill_after_s=cfg.outbox.backfill_after_s,
                status_fn=self.status_fields,
            )
        except BaseException:
            self.outbox.close()
            raise
        self.stop = threading.Event()
        self._threads: list[threading.Thread] = []
        #: The one line that says which thread died of what (the first one: the others follow from it).
        self.failure: str | None = None
        self._failure_lock = threading.Lock()
        # The config's secrets and the ones sources read from files (a meter's B-route ID and password).
        held = _secrets(cfg).union(*(_secrets(getattr(src, "secrets", tuple)()) for src in self.sources))
        self._secrets = sorted(held, key=len, reverse=True)
        #: A fresh local status file is wanted (SIGUSR1: `cityos gateway check --live` asks while it waits).
        self.status_wanted = False
        self._status_path = status_path(cfg)
        self._status_warned = -_STATUS_WARN_S

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
        failed = self.outbox.store_failed_by_source()
        for src in self.sources:
            # readings this source handed over that a full disk kept out of the outbox
            counters[field_name(f"{src.name}_store_failed")] = float(failed.get(src.name, 0))
            for k, v in src.health().items():
                counters[field_name(f"{src.name}_{k}")] = float(v)
        return {
            "agent_version": agent_version(),
            "config_hash": self.cfg_hash,
            "backlog_depth": self.outbox.depth,
            "backlog_age_s": round(self.outbox.oldest_age_s(), 3),
            "counters": counters,
            "devices": self.device_health(),
        }

    def device_health(self) -> dict[str, dict[str, float]]:
        """Health per device behind each source (each forest station, each meter) for the fleet view; a source
        without ``devices()`` reports none."""
        out: dict[str, dict[str, float]] = {}
        for src in self.sources:
            devices = getattr(src, "devices", None)
            if devices is None:
                continue
            for dev, health in devices().items():
                if len(out) < 64:  # the status message's bound (wire.GatewayStatus.devices)
                    out[dev] = {field_name(k): float(v) for k, v in health.items()}
        return out

    def local_status(self, state: str = "online") -> dict[str, Any]:
        """The local status file's contents (see the module docstring)."""
        return {
            "v": STATUS_VERSION,
            "gateway_id": self.cfg.gateway.id,
            "state": state,
            "boot_id": self.boot_id,
            "ts": int(time.time() * 1000),
            **self.status_fields(),
            "pid": os.getpid(),
            "process_start": process_start(os.getpid()),
            "kernel_boot_id": kernel_boot_id(),
            "mono": time.monotonic(),
            "interval_s": self.cfg.mqtt.status_interval_s,
            "failure": self.failure,
        }

    def write_status(self, state: str = "online") -> None:
        """Write the local status file; a failure is logged (once a minute), never raised."""
        try:
            write_status_file(self._status_path, self.local_status(state))
        except Exception as exc:
            if time.monotonic() - self._status_warned >= _STATUS_WARN_S:
                self._status_warned = time.monotonic()
                log.warning("cannot write the local status file %s: %s", self._status_path, exc)

    def _supervise(self, src: Source) -> None:
        """A source bug must not take the gateway down: log it, count it, restart the source after a pause. (A
        full disk is no crash: ``emit`` then drops the reading, counted by the outbox, and the source goes on.)"""
        ctx = _Context(src.name, self.outbox)
        while not self.stop.is_set():
            try:
                src.run(ctx, self.stop)
            except Exception:
                self.source_restarts[src.name] += 1
                log.exception("source %s crashed; restarting in %.0f s", src.name, _SOURCE_RESTART_S)
                self.stop.wait(_SOURCE_RESTART_S)
                continue
            if not self.stop.is_set():  # returned while it should run: restart it, but never in a busy loop
                self.source_restarts[src.name] += 1
                log.warning("source %s stopped by itself; restarting in %.0f s", src.name, _SOURCE_RESTART_S)
                self.stop.wait(_SOURCE_RESTART_S)

    def _source_health(self, src: Source) -> Callable[[], dict[str, float]]:
        def health() -> dict[str, float]:
            # first: the reading keeps 64 values, and this one must not be the one left out
            return {"store_failed": float(self.outbox.store_failed_by_source().get(src.name, 0)), **src.health()}

        return health

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
                    counters,
                    [(s.name, families.get(s.name, "source"), self._source_health(s)) for s in self.sources],
                )
                for r in readings:
                    self.outbox.append(r)
            except Exception:
                log.exception("health sample failed")

    def start(self) -> None:
        if self.cfg.health.enabled:
            self._spawn("health", "[health], outbox.path", self._health_loop)
        for src in self.sources:
            self._spawn(f"source-{src.name}", f"[[sources]] name = {src.name!r}", self._supervise, src)
        self._spawn("uplink", "[mqtt]", self.uplink.run, self.stop)

    def _spawn(self, name: str, settings: str, target: Callable[..., None], *args: Any) -> None:
        t = threading.Thread(target=self._guarded, args=(name, settings, target, *args), name=name, daemon=True)
        t.start()
        self._threads.append(t)

    def _guarded(self, name: str, settings: str, target: Callable[..., None], *args: Any) -> None:
        """Run a thread's body; if it ends while the agent should run (an exception, or a return), record why
        and stop the agent: :meth:`wait` then says so in one line and the process exits non-zero."""
        try:
            target(*args)
        except BaseException as exc:  # SystemExit in a thread would end it silently too
            log.debug("thread %s died", name, exc_info=True)  # the traceback, for a developer at DEBUG only
            if isinstance(exc, ConfigError):  # its message names the setting
                cause = str(exc)
            else:
                cause = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
                cause += f" (settings: {settings})"
            self._died(name, cause)
            return
        if not self.stop.is_set():
            self._died(name, f"returned while the agent was running (settings: {settings})")

    def _died(self, name: str, cause: str) -> None:
        line = " ".join(cause.split())  # one line, whatever the exception's message held
        for secret in self._secrets:
            line = line.replace(secret, "***")
        with self._failure_lock:
            if self.failure is None:
                self.failure = f"thread {name} died: {line[:400]}; exiting with status {EXIT_THREAD_DIED}"
        self.stop.set()

    def wait(self) -> int:
        """The main loop: until a signal (exit status 0) or a dead thread (logged in one line, status 1), then a
        clean shutdown. Gives back freed heap meanwhile."""
        # Give back what start-up left free (config and schema building, opening ports, the first connect),
        # then keep doing so: a backlog drain or an outage grows the heap in bursts (a trim every 10 s: ~0.15 MiB
        # less than every minute at 300 adverts/s; the full collection stays once a minute, ~5 ms).
        next_trim = time.monotonic() + _FIRST_TRIM_S
        trims = 0
        next_status, disk_full = 0.0, self.outbox.disk_full
        while not self.stop.wait(1):
            now = time.monotonic()
            if self.status_wanted or now >= next_status or self.outbox.disk_full != disk_full:
                self.status_wanted, disk_full = False, self.outbox.disk_full
                self.write_status()
                next_status = now + self.cfg.mqtt.status_interval_s
            if now >= next_trim:
                release_free_memory(collect=trims % _COLLECT_EVERY == 0)
                trims += 1
                next_trim = time.monotonic() + _TRIM_INTERVAL_S
        failure = self.failure
        if failure is not None:
            log.critical("%s", failure)
        self.write_status("offline")
        self.shutdown()
        return EXIT_THREAD_DIED if failure is not None else 0

    def shutdown(self, timeout: float = 10) -> None:
        self.stop.set()
        deadline = time.monotonic() + timeout
        for t in self._threads:
            t.join(max(0.1, deadline - time.monotonic()))
        self.outbox.close()


def _secrets(model: Any) -> set[str]:
    """Every secret value in a config (``SecretStr`` fields, at any depth), to keep out of log lines."""
    found: set[str] = set()
    if isinstance(model, SecretStr):
        value = model.get_secret_value()
        if len(value) >= 4:  # shorter would blank out ordinary words
            found.add(value)
    elif isinstance(model, BaseModel):
        for name in type(model).model_fields:
            found |= _secrets(getattr(model, name, None))
    elif isinstance(model, list | tuple):
        for item in model:
            found |= _secrets(item)
    elif isinstance(model, dict):
        for item in model.values():
            found |= _secrets(item)
    return found


def run(config_path: str | Path) -> int:
    raw = read_toml(config_path)
    cfg = parse_config(raw, str(config_path))
    logging.basicConfig(
        level=cfg.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", force=True
    )
    try:
        # The hash of the file as written (it holds no secret: those are files it points at), the same function
        # the fleet registry applies to the config it issued: the fleet view compares the two.
        agent = Agent(cfg, cfg_hash=config_hash(raw))
    except ConfigError:
        raise  # the CLI prints it (one line per problem, naming the setting) and exits 2
    except Exception as exc:  # never a traceback at start: one line, status 1
        log.debug("cannot start", exc_info=True)
        cause = " ".join(f"{type(exc).__name__}: {exc}".split())
        for secret in sorted(_secrets(cfg), key=len, reverse=True):
            cause = cause.replace(secret, "***")
        log.critical("gateway %s cannot start: %s", cfg.gateway.id, cause[:400])
        return EXIT_THREAD_DIED

    def _term(signum: int, _frame: Any) -> None:
        log.info("signal %d: stopping", signum)
        agent.stop.set()

    def _status_wanted(_signum: int, _frame: Any) -> None:
        agent.status_wanted = True  # the main loop writes it within a second (no lock taken in a handler)

    signal.signal(signal.SIGTERM, _term)
    signal.signal(signal.SIGINT, _term)
    signal.signal(signal.SIGUSR1, _status_wanted)
    log.info(
        "gateway %s starting: %d source(s), outbox %s holds %d readings",
        cfg.gateway.id, len(agent.sources), cfg.outbox.path, agent.outbox.depth,
    )
    agent.start()
    code = agent.wait()
    log.info("gateway %s stopped", cfg.gateway.id)
    return code
