"""Predictions against measurements: runs the executor on a grid of configurations, predicts
each from fresh profiles, and reports the error (``python -m validation``). The top layer: it
uses the simulator, the executor, the profilers and the reports."""
