"""``python -m streams.runtime``: a worker configured from ``VIRALWATCH_*`` variables only."""

from streams.runtime.worker import main

main()
