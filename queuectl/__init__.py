"""queuectl: a local background job queue whose jobs are JSON files in a Maildir-style
spool; see README.md and docs/."""

__version__ = "0.1.0"
