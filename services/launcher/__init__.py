"""The one-command local run: every role as a supervised local process."""
