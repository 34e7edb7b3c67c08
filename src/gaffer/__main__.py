from gaffer.cli import entry

entry()
