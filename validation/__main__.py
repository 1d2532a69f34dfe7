"""``python -m validation``: see ``validation.run``."""

from sim.cli import run_main
from validation.run import main

run_main(main)
