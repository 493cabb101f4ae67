"""Experiments: how model versions are compared honestly (issue 13).

A library, like ``monitor/``: the control plane keeps the rewards each variant received and asks
it for bandit weights (``bandits.py``) and for a sequential comparison that stays valid however
often people look (``sequential.py``); both read the per-variant sufficient statistics in
``rewards.py``. Nothing here serves requests or touches the store.
"""
