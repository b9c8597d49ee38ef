"""The sharded dynamic hash table: key -> row, rows and optimizer slots (shard.py), growth
without copies (mapped.py), admission and eviction of features (lifecycle.py)."""

from desmpi.table.shard import ShardTable

__all__ = ["ShardTable"]
