"""PEFT Workbench: plan, run and compare parameter-efficient fine-tuning from a browser.

Library entry points (kept small, later layers build on them):

- :func:`workbench.specs.load_model_spec` -- a :class:`~workbench.specs.ModelSpec` from a
  bundled snapshot name, a local folder, a hub id, or ``tiny``.
- :data:`workbench.methods.registry.METHODS` -- every fine-tuning method with its knobs.
- :func:`workbench.memory.plan` -- the memory plan, a breakdown of named components.
"""

__version__ = "0.1.0"
