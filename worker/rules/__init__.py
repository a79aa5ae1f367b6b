"""Rules: which traces become eval candidates, and why.

Start with ``engine`` (``load_rules`` parses and validates a rules file once; ``RuleSet.evaluate``
decides one trace), then ``filters`` (the MLflow filter grammar, parsed and matched locally, also
used by the curator's dataset specs). ``defaults`` is the built-in rule set, which documents the
file format; ``explain`` formats ``rules explain`` and ``rules test``. Import the modules
themselves: this package imports nothing, so a command that only prints help never loads MLflow.
"""
