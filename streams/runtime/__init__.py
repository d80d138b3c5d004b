"""The Kafka runtime: the only package that talks to Kafka and imports Faust.

- :mod:`streams.runtime.worker`: the worker (Faust app, topics, tables, agents),
  which builds the owners below and delegates to them; ``python -m streams.runtime``;
- :mod:`streams.runtime.topology`: the stages of :mod:`streams.stages` for the
  partitions one process holds, wired once (worker and tests alike);
- :mod:`streams.runtime.hand_over`, :mod:`streams.runtime.state_log`,
  :mod:`streams.runtime.outputs`, :mod:`streams.runtime.checkpoint`: the
  in-process hand-over, the state logs, the outputs once per id, the order of commits;
- :mod:`streams.runtime.shares_reader`, :mod:`streams.runtime.bank_follower`: the
  two inputs Faust does not read;
- :mod:`streams.runtime.local_run`: the whole topology in memory, on the same objects;
- :mod:`streams.runtime.faust_adapter`: every private attribute of Faust and
  aiokafka the worker needs, in one module with a test of its own;
- :mod:`streams.runtime.broker` and :mod:`streams.runtime.kafka_server`: the
  brokers this project starts (the bundled one, Apache Kafka);
- :mod:`streams.runtime.produce`: events onto the ``shares`` topic.

The pure core (``streams/*.py``: events, banks, routing, reordering, the
detector, the policy) imports none of it and runs the same in ``replay``.
"""
