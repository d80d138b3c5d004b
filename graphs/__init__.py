"""Cascade science for viralwatch: reshare trees, their figures, velocity and prediction.

Pure: NetworkX, NumPy and the standard library only.
"""
