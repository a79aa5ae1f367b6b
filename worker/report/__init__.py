"""Rendering of reports, pure (data in, text out): ``text`` (table, JSON, CSV of a
``store.report.Summary``) and ``page`` (one self-contained HTML page of a
``store.dashboard.Dashboard``, the ``--format html`` file and the live ``/`` page).
"""
