"""`python -m queuectl` runs the command line."""
from .cli import main

main(prog_name="queuectl")
