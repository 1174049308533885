"""skrd4ad: Reverse Distillation (RD4AD) and its skip-connected variant SK-RD4AD.

The package is split by idea: ``skrd4ad.models`` (networks, losses, anomaly maps),
``skrd4ad.data`` (download, synthetic default, prepared cache), ``skrd4ad.metrics``
(image/pixel AUROC, AUPRO), ``skrd4ad.train``, ``skrd4ad.evaluate`` and ``skrd4ad.cli``.
Nothing is downloaded or built at import time.
"""

__version__ = "0.1.0"
