"""viralwatch: streaming detection of known-harmful content spreading across a platform."""

__version__ = "0.1.0"
