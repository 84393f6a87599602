"""The moto server, with DynamoDB transactions that back up only the items they name, and
without the per-request costs that grow with a queue.

moto backs up a transaction by deep-copying every table it touches, once per item of the
transaction, and puts the copies back when the transaction is cancelled. So each
TransactWriteItems costs time in proportion to everything the table holds (a delivery scenario
with a few thousand batches slows down as it runs, which DynamoDB does not do), and a cancelled
one undoes the writes other requests made to other items meanwhile (counters lost). This wrapper
keeps moto's semantics for the items a transaction names (restored when it is cancelled), leaves
every other item alone, and makes each DynamoDB operation atomic with one lock (moto serves
requests on threads; a cancelled transaction's undo could otherwise overwrite another request's
write to a counter it named). moto's SQS counts a queue's messages on every SendMessage and once
per message a ReceiveMessage looks at; those counts are made lazy (see below). Arguments are
moto_server's.
"""
import copy as _copy
import logging
import os
import sys
import threading
import time
import types
from collections.abc import Mapping

import moto.backends as _backends
import moto.dynamodb.models as _models
import moto.sqs.models as _sqs
from moto.dynamodb.models import DynamoDBBackend
from moto.dynamodb.models.dynamo_type import DynamoType
from moto.dynamodb.models.table import Table
from werkzeug.serving import WSGIRequestHandler

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

# moto answers a Query on a table by sorting every item of the table and keeping the partition's:
# a delivery scenario's table of ten thousand batches makes each one cost milliseconds (DynamoDB
# reads the partition only). Within a query of the table itself, only the partition is listed.
_real_all_items = Table.all_items
_real_query = Table.query


def _all_items(self):
    hash_key = getattr(_local, "query_hash", None)
    if hash_key is None:
        return _real_all_items(self)
    partition = self.items.get(hash_key)
    if partition is None:
        return []
    if not self.range_key_attr:
        return [partition]
    return sorted(partition.values(), key=lambda item: item.range_key)


def _query(self, hash_key, *args, **kwargs):
    index_name = kwargs.get("index_name", args[6] if len(args) > 6 else None)
    if index_name or hash_key is None:
        return _real_query(self, hash_key, *args, **kwargs)
    _local.query_hash = hash_key
    try:
        return _real_query(self, hash_key, *args, **kwargs)
    finally:
        _local.query_hash = None


Table.all_items = _all_items
Table.query = _query

# moto's SQS recomputes every attribute of a queue, counting its messages three times over, on
# each SendMessage (to read ContentBasedDeduplication) and, through GetQueueAttributes, for each
# message a ReceiveMessage considers: a queue holding a few thousand results messages then
# costs milliseconds per request. The counts are computed when they are asked for instead.
_COUNTS = {
    "ApproximateNumberOfMessages": "approximate_number_of_messages",
    "ApproximateNumberOfMessagesDelayed": "approximate_number_of_messages_delayed",
    "ApproximateNumberOfMessagesNotVisible": "approximate_number_of_messages_not_visible",
}
_real_attributes = _sqs.Queue.attributes.fget
_real_counts = {name: getattr(_sqs.Queue, name).fget for name in _COUNTS.values()}


def _count(name):
    def get(self):
        if getattr(_local, "skip_counts", False):
            return 0
        return _real_counts[name](self)

    return property(get)


for _name in _COUNTS.values():
    setattr(_sqs.Queue, _name, _count(_name))


class _Attributes(Mapping):
    def __init__(self, queue):
        self._queue = queue
        _local.skip_counts = True
        try:
            self._fixed = _real_attributes(queue)
        finally:
            _local.skip_counts = False

    def __getitem__(self, key):
        value = self._fixed[key]
        if key in _COUNTS:
            return getattr(self._queue, _COUNTS[key])
        return value

    def __iter__(self):
        return iter(self._fixed)

    def __len__(self):
        return len(self._fixed)


_sqs.Queue.attributes = property(_Attributes)
_real_get_queue_attributes = _sqs.SQSBackend.get_queue_attributes


def _get_queue_attributes(self, *args, **kwargs):
    return dict(_real_get_queue_attributes(self, *args, **kwargs))


def _retained(self, queue_name, message):
    retention = int(self.get_queue(queue_name).message_retention_period)
    return retention + message.sent_timestamp / 1000 > _sqs.unix_time()


_sqs.SQSBackend.get_queue_attributes = _get_queue_attributes
_sqs.SQSBackend.is_message_valid_based_on_retention_period = _retained

# Per-request overheads that are not the emulation: moto lists its package directory to route
# every request, werkzeug formats a log line for each and answers HTTP/1.0 (a new connection and
# thread per request). The scenarios send tens of thousands of requests.
_modules = tuple(_backends.list_of_moto_modules())
_backends.list_of_moto_modules = lambda: _modules
logging.getLogger("werkzeug").setLevel(logging.WARNING)
WSGIRequestHandler.protocol_version = "HTTP/1.1"

# MOTO_PROFILE=<file>: every second, the requests served so far by operation (count and seconds
# spent), as JSON, for measuring what a scenario asks of its AWS peer.
if os.environ.get("MOTO_PROFILE"):
    import json as _json

    _profile = {}
    _real_run_wsgi = WSGIRequestHandler.run_wsgi

    import moto.dynamodb.responses as _responses

    def _noting(method):
        def run(self, *args, **kwargs):
            try:
                body = self.body if isinstance(self.body, dict) else _json.loads(self.body)
                key = body.get("Key") or body.get("Item") or {}
                sk = key.get("sk", {}).get("S", "")
                _local.kind = sk.split("#")[0]
            except Exception:
                pass
            return method(self, *args, **kwargs)

        return run

    for _name in ("put_item", "update_item", "get_item"):
        setattr(_responses.DynamoHandler, _name, _noting(getattr(_responses.DynamoHandler, _name)))

    def _run_wsgi(self):
        op = self.headers.get("X-Amz-Target", "other").split(".")[-1]
        started = time.perf_counter()
        _local.kind = None
        try:
            return _real_run_wsgi(self)
        finally:
            if getattr(_local, "kind", None) is not None:
                op = f"{op}:{_local.kind}"
            spent = time.perf_counter() - started
            with _lock:
                entry = _profile.setdefault(op, [0, 0.0])
                entry[0] += 1
                entry[1] += spent

    def _dump(path):
        while True:
            time.sleep(1)
            with _lock:
                text = _json.dumps(_profile, sort_keys=True)
            with open(path + ".tmp", "w") as f:
                f.write(text)
            os.replace(path + ".tmp", path)

    WSGIRequestHandler.run_wsgi = _run_wsgi
    threading.Thread(target=_dump, args=(os.environ["MOTO_PROFILE"],), daemon=True).start()



def _exit_with(pid):
    # The process that started this server was killed without stopping it (a test run
    # interrupted, SIGKILL): do not outlive it.
    while True:
        time.sleep(1)
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            os._exit(0)
        except PermissionError:
            pass


if __name__ == "__main__":
    from moto.server import main

    # MOTO_WATCH_PID: stop when that process is gone.
    if os.environ.get("MOTO_WATCH_PID", "").isdigit():
        threading.Thread(
            target=_exit_with, args=(int(os.environ["MOTO_WATCH_PID"]),), daemon=True
        ).start()
    sys.exit(main())
