"""Batch transform: split input objects into mini-batches, send them through transient instances,
assemble ordered ``.out`` objects. ``local`` runs instances beside the server, ``ray_backend`` on
a Ray cluster; both share the splitting (``records``), the DataProcessing (``filters``), the
invocation with retry (``invoke``) and the output assembly (``assemble``)."""
