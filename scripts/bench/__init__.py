"""Sections of `scripts/benchmark.py`: one module per section, each with a `run(context) -> SectionResult`.

See the driver's docstring for how to add one; `common` holds what sections share (models, inputs, timers, the
memory probe and the result types).
"""
