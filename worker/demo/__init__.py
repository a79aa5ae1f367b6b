"""``trace-curator demo``: the whole product on one machine with no infrastructure.

Start with ``runner`` (the command: broker, stores, the real worker, progress), then ``traffic``
(real MLflow traces of a small support bot, drawn from one seed), ``outlet`` (where the records go
besides MLflow) and ``summary`` (what the store holds at the end). Needs the ``demo`` extra.
"""
