"""gunicorn configuration of the end-to-end tests: the master creates the
KeyMesh segment before it forks its workers, and removes it when it exits."""
import os

import keymesh

bind = "127.0.0.1:0"
workers = int(os.environ.get("KMT_WORKERS", "4"))
worker_class = "sync"
timeout = 120
graceful_timeout = 5
accesslog = None
loglevel = "info"


def on_starting(server):
    server.keymesh_pool = keymesh.SyncKeyPool.create(os.environ["KMT_SEG"],
                                                     os.environ["KMT_CONFIG"])
    server.log.info("keymesh: created segment %s", os.environ["KMT_SEG"])


def on_exit(server):
    server.keymesh_pool.close()
    keymesh.unlink(os.environ["KMT_SEG"])
