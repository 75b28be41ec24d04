"""Command-line programs (the top layer): maskst-run, maskst-export and their shared plumbing."""
