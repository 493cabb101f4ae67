"""The web dashboard at ``/ui``: server-rendered pages (Jinja2) over the control plane, the metrics store
and the serving snapshots, with a little plain JavaScript and a charting library shipped in the package.

It sits between the doors (``api``, which routes ``/ui`` here and hands it the key lookup) and the
control plane it reads; it never touches the invocation path.
"""
