"""The Kafka runtime: the only package that talks to Kafka and imports Faust.

- :mod:`streams.runtime.worker`: the worker (Faust app, topics, tables, agents
  around the pure stages of :mod:`streams.stages`), and ``python -m streams.runtime``;
- :mod:`streams.runtime.faust_adapter`: every private attribute of Faust and
  aiokafka the worker needs, in one module with a test of its own;
- :mod:`streams.runtime.broker` and :mod:`streams.runtime.kafka_server`: the
  brokers this project starts (the bundled one, Apache Kafka);
- :mod:`streams.runtime.produce`: events onto the ``shares`` topic.

The pure core (``streams/*.py``: events, banks, routing, reordering, the
detector, the policy) imports none of it and runs the same in ``replay``.
"""
