"""Alerts: what is wrong with a service right now, raised once with its cause and a hint, cleared when it ends.

``pods`` (pod and Deployment JSON -> the conditions that hold), ``logs``
(log lines -> app errors), ``cross`` (a sync of one service, then another
failing), ``exits`` (the agent's process exits) are pure; ``watcher`` is the
one task per `up` that feeds them from the cluster and the store;
``terminal`` prints alerts apart from logs and notifies the desktop.
"""
