"""The gateway agent: sources → durable outbox → uplink.

* ``agent``: ``cityos gateway run`` (``run``), the one process of a gateway;
* ``config``: the gateway's config (``load_config``, ``GatewayConfig``);
* ``sources``: one folder per device family (``sources/<family>/``), their shared helpers (``sources/common/``)
  and the plug-in interface (``sources/base.py``);
* ``outbox``: the durable store (SQLite WAL): a reading is stored before it is sent and deleted after the broker's
  acknowledgement;
* ``uplink``: MQTT v5, QoS 1, the wire contract's batches;
* ``health``, ``machine``, ``clock``: the gateway's own health readings and its clock.

It imports only the kernel (``cityos``); nothing is imported here.
"""

__all__ = ["agent", "clock", "config", "health", "machine", "outbox", "sources", "uplink"]
