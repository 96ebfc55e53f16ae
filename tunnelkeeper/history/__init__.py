"""What happened, kept: every state change in SQLite, and the outages and availability read back.

store       the database: schema, a writer thread, events
service     the recorder that turns published snapshots into events
report      outages and availability over a window, for `history` and the dashboard
"""
