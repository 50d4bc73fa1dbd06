"""lcbench's core, in floors whose imports run one way (see the README's Layout section):
``api`` (the contract), ``data``, ``train``, ``runs``, ``report``, ``adapters``, and ``cli``."""
from harness import moved

moved.install()
