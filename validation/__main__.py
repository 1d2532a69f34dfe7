"""``python -m validation``: see ``validation.cli``."""

from sim.cli import run_main
from validation.cli import main

run_main(main)
