"""``python -m kvsim``: the ``kvsim`` command line (see :mod:`kvsim.cli`)."""

from kvsim.cli import main

if __name__ == "__main__":
    main(prog_name="kvsim")
