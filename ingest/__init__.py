"""The cloud ingest: subscribe → decode/validate → batch → write (docs/ingest.md).

* ``service``: ``IngestService`` and ``main`` (``cityos ingest``);
* ``config``: ``IngestConfig``, ``load_config``;
* ``mqtt_in``: the durable MQTT session, acknowledged only after InfluxDB stored what a message held;
* ``decode``, ``decode_pool``: the wire contract's checks, in worker processes;
* ``lineproto``: readings and statuses as InfluxDB line protocol;
* ``batcher``: batches and the in-order acknowledgement of messages;
* ``deadletter``: where a message that breaks the contract is kept, with its reason;
* ``health``: ``health.json`` and the health endpoint.

It writes through the kernel's InfluxDB client (``cityos.influx``); nothing is imported here.
"""

__all__ = ["batcher", "config", "deadletter", "decode", "decode_pool", "health", "lineproto", "mqtt_in", "service"]
