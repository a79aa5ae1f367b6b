"""Rules: which traces become eval candidates, and why.

Start with ``engine`` (``load_rules`` parses and validates a rules file once; ``RuleSet.evaluate``
decides one trace), then ``filters`` (the MLflow filter grammar, parsed and matched locally, also
used by the curator's dataset specs). Below it, ``mlflow_parser`` runs MLflow's parser (in a
short-lived helper process unless MLflow is already loaded) and ``predicates`` compiles each
parsed clause into a plain function that answers as MLflow's matcher. ``defaults`` is the built-in
rule set, which documents the file format; ``explain`` formats ``rules explain`` and ``rules
test``. Import the modules themselves: this package imports nothing, and no module here imports
MLflow at import time, so the running worker never keeps it in memory for its rules.
"""
