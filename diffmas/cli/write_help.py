"""``python -m diffmas.cli.write_help``: store every subcommand's options in help.json again
(after adding or changing an option; tests/test_cli_help.py says when it is needed)."""

from diffmas.cli.helptext import HELP_FILE, write

if __name__ == "__main__":
    write()
    print(f"wrote {HELP_FILE}")
