"""``python -m docstokg``: the same command line as the ``docstokg`` script."""

from docstokg.cli import main

main()
