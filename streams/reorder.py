"""Event-time ordering: hold records until event time has passed them, then apply in order.

Kafka orders records within a partition only, and producers key share events
as they like, so the reshares of one cascade arrive out of order. Stream
processors answer this with a *watermark* (Flink) or *stream time* (Kafka
Streams): how far event time is known to have advanced. Records wait here
until the watermark passes them, and come out in ``(ts, key)`` order, so
every consumer of the same events applies them in the same order, whatever
the partitioning and the batch boundaries. The key (the event id) breaks
ties, so even equal timestamps give one order.

The buffer is compiled (``rust/core/src/reorder.rs``): it sits on every
event's path, in replay and in a worker's clusters partitions, and holds
references to the records, no copy.

>>> buf = ReorderBuffer()
>>> for ts, key in [(30, "c"), (10, "a"), (20, "b")]:
...     buf.push(ts, key, key.upper())
>>> buf.release(20)
['A', 'B']
>>> len(buf), buf.drain()
(1, ['C'])
"""

from streams._core import ReorderBuffer

__all__ = ["ReorderBuffer"]
