"""Training wiring around ``train.py``: config helpers, callbacks, checkpoints, sweeps and the demo ablation.

Importing this package registers the project's OmegaConf resolvers (``swim.sweep_group``,
``swim.run_name``) that the logger configs use.
"""

from swim.train.resolvers import register_resolvers

register_resolvers()
