"""The moto server, with DynamoDB transactions that back up only the items they name.

moto backs up a transaction by deep-copying every table it touches, once per item of the
transaction, and puts the copies back when the transaction is cancelled. So each
TransactWriteItems costs time in proportion to everything the table holds (a delivery scenario
with a few thousand batches slows down as it runs, which DynamoDB does not do), and a cancelled
one undoes the writes other requests made to other items meanwhile (counters lost). This wrapper
keeps moto's semantics for the items a transaction names (restored when it is cancelled), leaves
every other item alone, and makes each DynamoDB operation atomic with one lock (moto serves
requests on threads; a cancelled transaction's undo could otherwise overwrite another request's
write to a counter it named). Arguments are moto_server's.
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


def _deepcopy(obj, memo=None):
    # Inside a transaction moto "backs up" each table it touches: hand it the live table, so
    # that its rollback (putting the backup back) changes nothing, and restore the items the
    # transaction names ourselves. A whole-table backup put back would also undo every write
    # other requests made to other items meanwhile.
    if getattr(_local, "active", False) and isinstance(obj, Table):
        return obj
    return _copy.deepcopy(obj, memo)


_shim = types.SimpleNamespace(**{k: getattr(_copy, k) for k in dir(_copy) if not k.startswith("__")})
_shim.deepcopy = _deepcopy
_models.copy = _shim


def _get(table, hash_key, range_key):
    value = table.items.get(hash_key)
    if range_key is None or value is None:
        return value
    return value.get(range_key)


def _put_back(table, hash_key, range_key, saved):
    if range_key is None:
        if saved is None:
            table.items.pop(hash_key, None)
        else:
            table.items[hash_key] = saved
    elif saved is None:
        if hash_key in table.items:
            table.items[hash_key].pop(range_key, None)
    else:
        table.items[hash_key][range_key] = saved


def _transact_write_items(self, transact_items):
    saved = []
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
        saved.append((table, hash_key, range_key, _copy.deepcopy(_get(table, hash_key, range_key))))
    _local.active = True
    try:
        return _real_transact(self, transact_items)
    except Exception:
        for table, hash_key, range_key, item in reversed(saved):
            _put_back(table, hash_key, range_key, item)
        raise
    finally:
        _local.active = False


DynamoDBBackend.transact_write_items = _transact_write_items

# moto serves requests on threads and applies a transaction item by item (then undoes it when it
# is cancelled): one lock around every DynamoDB operation makes each one atomic, as DynamoDB's
# are, so no request sees or overwrites another's half-done transaction.
_lock = threading.RLock()


def _locked(method):
    def run(self, *args, **kwargs):
        with _lock:
            return method(self, *args, **kwargs)

    run.__name__ = method.__name__
    return run


for _name in (
    "put_item",
    "update_item",
    "delete_item",
    "get_item",
    "query",
    "scan",
    "batch_get_item",
    "batch_write_item",
    "transact_write_items",
    "transact_get_items",
):
    if hasattr(DynamoDBBackend, _name):
        setattr(DynamoDBBackend, _name, _locked(getattr(DynamoDBBackend, _name)))

if __name__ == "__main__":
    from moto.server import main

    sys.exit(main())
