"""
``python -m devicecloud`` runs the CLI.
"""

from devicecloud.cli import main

main()
