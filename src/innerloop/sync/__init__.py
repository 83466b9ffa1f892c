"""The local side of file sync: which files a rule covers, their state, what to send, and when they change.

- ``ignore.py``: the scope of a sync rule (its ``exclude`` patterns, the
  ``.gitignore`` files, the build context's ``.dockerignore``), compiled once.
- ``tree.py``: a folder scanned into path -> (size, mode, sha256), with a stat
  cache so unchanged files are never read twice.
- ``plan.py``: pure decisions: what to upload and delete, for the first sync and
  for each batch of changes, and what each change means for a service.
- ``watcher.py``: batches of changes under the sync roots, in tens of
  milliseconds, with a clear error instead of a silent fallback to polling.

The transport (sending files into the pod) lives elsewhere; nothing here
touches the network or the cluster.
"""
