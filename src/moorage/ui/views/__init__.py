"""What the dashboard's pages show, gathered as plain dicts from the store, the live routes and the reports.

One module per page (rollouts, experiments, monitoring, jobs), each a set of pure functions, so what
a page says is tested without a browser; the pages (``ui/pages``) only route and render.
"""
