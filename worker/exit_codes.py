"""Named exit codes of every ``trace-curator`` command (container healthchecks rely on them)."""

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_CONFIG = 2  # bad settings, files or usage
EXIT_UNAVAILABLE = 3  # the store or the broker is unreachable
EXIT_SCHEMA = 4  # the store's schema is out of date: run `trace-curator db upgrade`
EXIT_INTERRUPTED = 130  # stopped by Ctrl+C
