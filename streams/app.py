"""``python -m streams.app``: the worker's entry point of earlier releases, kept for deployments.

The worker lives in :mod:`streams.runtime.worker`; run it as ``viralwatch
worker`` or ``python -m streams.runtime``.
"""

from streams.runtime.worker import main

if __name__ == "__main__":
    main()
