"""The moto server, with DynamoDB transactions that back up only the items they name.

moto backs up a transaction by deep-copying every table it touches, once per item of the
transaction, so each TransactWriteItems costs time in proportion to everything the table
holds: a delivery scenario with a few thousand batches slows down as it runs, which DynamoDB
does not do (and which the scenarios would mistake for the dispatcher's own slowness). This
wrapper keeps moto's semantics (the named items are restored when the transaction is
cancelled) and makes the backup cost what the transaction names. Arguments are moto_server's.
"""
import copy as _copy
import sys
import threading
import types

import moto.dynamodb.models as _models
from moto.dynamodb.models import DynamoDBBackend
from moto.dynamodb.models.dynamo_type import DynamoType
from moto.dynamodb.models.table import Table

_local = threading.local()
_real_transact = DynamoDBBackend.transact_write_items


def _backup(table, keys):
    """A stand-in for copy.deepcopy(table): the same table with its own item maps, sharing
    every item but the named ones, which are copied."""
    clone = _copy.copy(table)
    clone.items = _copy.copy(table.items)
    for hash_key, value in list(clone.items.items()):
        if isinstance(value, dict):
            clone.items[hash_key] = dict(value)
    for hash_key, range_key in keys:
        if hash_key not in clone.items:
            continue
        if range_key is None:
            clone.items[hash_key] = _copy.deepcopy(table.items[hash_key])
        elif range_key in clone.items[hash_key]:
            clone.items[hash_key][range_key] = _copy.deepcopy(table.items[hash_key][range_key])
    return clone


def _deepcopy(obj, memo=None):
    keys = getattr(_local, "keys", None)
    if keys is not None and isinstance(obj, Table):
        return _backup(obj, keys.get(obj.name, []))
    return _copy.deepcopy(obj, memo)


_shim = types.SimpleNamespace(**{k: getattr(_copy, k) for k in dir(_copy) if not k.startswith("__")})
_shim.deepcopy = _deepcopy
_models.copy = _shim


def _transact_write_items(self, transact_items):
    keys = {}
    for entry in transact_items:
        _, op = next(iter(entry.items()))
        table = self.tables.get(op.get("TableName"))
        if table is None:
            continue
        raw = op.get("Key") or op.get("Item") or {}
        try:
            hash_key = DynamoType(raw[table.hash_key_attr])
            range_key = DynamoType(raw[table.range_key_attr]) if table.range_key_attr else None
        except KeyError:
            continue
        keys.setdefault(table.name, []).append((hash_key, range_key))
    _local.keys = keys
    try:
        return _real_transact(self, transact_items)
    finally:
        _local.keys = None


DynamoDBBackend.transact_write_items = _transact_write_items

if __name__ == "__main__":
    from moto.server import main

    sys.exit(main())
