"""``python -m lvmtoolkit`` runs the ``lvm`` command line."""

from lvmtoolkit.cli import main

main()
