"""The built-in rules (YAML), kept apart from ``worker.rules.engine`` so that reading them, for
``--help`` texts, loads nothing else."""

DEFAULT_RULES_YAML = """\
# trace-curator rules (TRACE_CURATOR_RULES_FILE); without a file, these defaults apply.
# Each rule sets one tag on the traces it matches. Keys of a rule:
#   name:        required, unique; names the rule in the decision log.
#   filter:      an MLflow search_traces filter, AND only, e.g. attributes.status = 'ERROR',
#                attributes.execution_time_ms > 5000, tags.environment = 'production',
#                metadata.`mlflow.trace.user` = 'alice', tags.`mlflow.traceName` = 'my_app'.
#   filters:     instead of filter: a list of filters, OR-ed.
#   feedback:    {name: quality | any_name: true, <test>: ...}; its tests are AND-ed, and a list
#                of such conditions is OR-ed. Tests: below (<), at_most (<=), above (>),
#                at_least (>=), equals, in: [...]. Only valid (not overridden) feedback counts;
#                strings compare case-insensitively; true/false are not numbers.
#                With a filter too, the rule fires when both hold.
#   tag:         {key: eval_candidate, value: <the rule name>}; both optional.
#   precedence:  per tag key, the lowest number wins; default: position in the file.
#   sample_rate: 0 < r <= 1, deterministic per (rule name, trace_id); default 1.
# Booleans are YAML 1.2: only true/false (an unquoted no stays the string 'no').
rules:
  - name: error_case
    filter: "attributes.status = 'ERROR'"
    tag: {key: eval_candidate, value: error_case}
    precedence: 1
  - name: slow_response
    filter: "attributes.execution_time_ms > 5000"
    tag: {key: eval_candidate, value: slow_response}
    precedence: 2
  - name: low_score
    feedback:
      - {any_name: true, in: [false, "no"]}
      - {any_name: true, below: 0.5}
    tag: {key: eval_candidate, value: low_score}
    precedence: 3
"""
