"""A catalogue on many machines: shards (ordinary index directories) served by Dask, behind one router.

:class:`ClusterRefrain` has :class:`refrain.api.Refrain`'s API; see docs/cluster.md.
"""

from refrain.cluster.engine import LocalCluster, ShardEngine, ShardUnavailableError
from refrain.cluster.layout import ClusterCatalog, ClusterOpenError, Shard
from refrain.cluster.router import ClusterRefrain, open_for_matching

__all__ = ["ClusterRefrain", "ClusterCatalog", "ClusterOpenError", "Shard", "ShardEngine", "LocalCluster",
           "ShardUnavailableError", "open_for_matching"]
