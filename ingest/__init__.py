"""The cloud ingest: subscribe → decode/validate → batch → write (docs/ingest.md).

* ``service``: ``IngestService`` and ``main`` (``cityos ingest``); a second process on the same MQTT session or
  data_dir is refused (``DuplicateInstance``, exit ``EXIT_DUPLICATE``);
* ``config``: ``IngestConfig``, ``load_config``;
* ``mqtt_in``: the durable MQTT session, acknowledged only after InfluxDB stored what a message held;
* ``decode``, ``decode_pool``: the wire contract's checks, in worker processes;
* ``lineproto``: readings and statuses as InfluxDB line protocol;
* ``batcher``: batches and the in-order acknowledgement of messages;
* ``deadletter``: where a message that breaks the contract is kept, with its reason;
* ``fieldtypes``: the field types InfluxDB holds, so a point it would refuse is dead-lettered, never sent;
* ``health``: ``health.json`` and the health endpoint: ``/health`` (JSON) and ``/metrics`` (Prometheus).

It writes through the kernel's InfluxDB client (``cityos.influx``); nothing is imported here.
"""

__all__ = ["batcher", "config", "deadletter", "decode", "decode_pool", "fieldtypes", "health", "lineproto", "mqtt_in",
           "service"]
