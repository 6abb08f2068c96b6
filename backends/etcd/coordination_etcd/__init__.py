"""etcd backend for :mod:`coordination`: ``connect("etcd://host:2379/namespace")``.

Installed as the distribution ``coordination-etcd``, which registers :class:`EtcdBackend`
for the ``etcd`` URL scheme in the entry-point group ``coordination.backends``. See
:class:`EtcdBackend` for the URL, its options and how the keys are laid out.
"""

from ._backend import EtcdBackend
from ._session import EtcdSession

__all__ = ["EtcdBackend", "EtcdSession"]
